"""TensorBoard scalars become run metrics, as FfDL's evaluation_metrics promised."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from wml_runner import tensorboard
from wml_runner.isolation import read_run_file as real_read
from wml_runner.tensorboard import EventFileTail, events

DEFINITION = Path(__file__).parent / "definitions" / "tensorboard"


def write_scalars(folder: Path, values: list[float]) -> None:
    writer = SummaryWriter(str(folder))
    for step, value in enumerate(values, start=1):
        writer.add_scalar("acc", value, step)
    writer.close()


def test_reader_decodes_what_pytorch_writes(tmp_path):
    write_scalars(tmp_path, [0.25, 0.5, 0.75])
    data = next(tmp_path.glob("*tfevents*")).read_bytes()
    assert [(step, values) for _, step, values in events(data)] == [
        (1, {"acc": 0.25}), (2, {"acc": 0.5}), (3, {"acc": 0.75})]


def test_tail_returns_only_new_complete_records(tmp_path):
    write_scalars(tmp_path / "a", [0.5, 0.75])
    tail = EventFileTail(tmp_path)
    assert [s for _, s, _ in tail.new_scalars()] == [1, 2]
    assert tail.new_scalars() == []
    path = next((tmp_path / "a").glob("*tfevents*"))
    whole = path.read_bytes()
    write_scalars(tmp_path / "b", [0.125])
    partial = next((tmp_path / "b").glob("*tfevents*"))
    complete = partial.read_bytes()
    partial.write_bytes(complete[:-3])  # a record half written
    assert tail.new_scalars() == []
    partial.write_bytes(complete)
    assert [v for _, _, v in tail.new_scalars()] == [{"acc": 0.125}]
    assert path.read_bytes() == whole


def test_tail_reads_only_what_was_written_since_its_last_look(tmp_path, monkeypatch):
    """A long run's event file is not read again from its start every tenth of a second."""
    write_scalars(tmp_path / "a", [0.5] * 200)
    path = next((tmp_path / "a").glob("*tfevents*"))
    tail = EventFileTail(tmp_path / "a")
    assert len(tail.new_scalars()) == 200
    write_scalars(tmp_path / "b", [0.25])
    more = next((tmp_path / "b").glob("*tfevents*")).read_bytes()
    read = []
    monkeypatch.setattr(tensorboard, "read_run_file",
                        lambda *args: read.append(len(data := real_read(*args))) or data)
    assert tail.new_scalars() == [] and read == [0]
    with path.open("ab") as f:
        f.write(more)
    assert [v for _, _, v in tail.new_scalars()] == [{"acc": 0.25}]
    assert read == [0, len(more)]


def test_run_with_tensorboard_metrics(backend):
    result = backend.cli("train", str(DEFINITION / "manifest.yml"), str(DEFINITION), "--wait")
    assert result.returncode == 0, result.stderr
    run_id = f"{result.stdout.strip().splitlines()[-1]}-01"
    run = backend.cli_json("show", run_id)
    assert run["metrics"]["accuracy"] == pytest.approx(1.0) and run["metrics"]["step"] == 5
    assert sorted(p["step"] for p in backend.cli_json("metrics", run_id)) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
