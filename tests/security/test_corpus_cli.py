"""The bad-input corpus through the ``wml`` command line: exit 2, a clear message, nothing stored.

Most cases run ``wml_jupyter.cli.main`` in-process (a subprocess per input would take minutes);
a handful run the real ``wml`` executable to prove the exit code and the absence of tracebacks.
"""

from __future__ import annotations

import subprocess

import corpus
import pytest
from checks import assert_clear

from wml_jupyter import cli


def wml(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``wml ARGV`` in this process; return its exit code and what it wrote to stderr."""
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def refused(argv: list[str], capsys, mentions: tuple[str, ...]) -> str:
    """Run ``wml ARGV`` and check it was refused as bad input, clearly; return the message."""
    code, err = wml(argv, capsys)
    assert code == 2, f"exit {code}: {err}"
    assert_clear(err, mentions)
    return err


def write(folder, case: corpus.ManifestCase):
    path = folder / case.filename
    path.write_bytes(case.data)
    return path


@pytest.mark.parametrize("case", corpus.manifest_cases(), ids=lambda c: c.id)
def test_validate_refuses_a_bad_manifest(case, tmp_path, capsys):
    refused(["validate", str(write(tmp_path, case))], capsys, case.mentions)


@pytest.mark.parametrize("case", corpus.manifest_cases(), ids=lambda c: c.id)
def test_train_refuses_a_bad_manifest(case, server, probe, paths, tmp_path, capsys):
    refused(["train", str(write(tmp_path, case)), str(paths.model)], capsys, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.sweep_cases(), ids=lambda c: c.id)
def test_train_refuses_a_bad_sweep(case, server, probe, paths, tmp_path, capsys):
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(case.manifest)
    runs = ["--runs", str(case.runs)] if case.runs else []
    refused(["train", str(manifest), str(paths.model), f"--sweep={case.flag}", *runs], capsys, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.zip_cases(), ids=lambda c: c.id)
def test_train_refuses_a_bad_code_zip(case, server, probe, paths, tmp_path, capsys):
    archive = tmp_path / f"{case.id}.zip"
    archive.write_bytes(case.data)
    message = refused(["train", str(paths.manifest), str(archive)], capsys, ())
    assert "code" in message or archive.name in message, message
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.argv_cases(), ids=lambda c: c.id)
def test_a_bad_command_line_is_refused(case, server, probe, paths, capsys):
    refused(paths.fill(case.argv), capsys, case.mentions)
    probe.assert_untouched()


#: Cases run as real ``wml`` processes: one of each kind of input.
SUBPROCESS_CASES = ["cli-train-manifest-is-dir", "cli-train-model-dangling-link", "cli-upload-prefix-dotdot",
                    "cli-download-dest-is-file", "cli-show-dotdot", "cli-accounts-exists"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_the_real_executable_exits_2_without_a_traceback(case_id, server, probe, paths):
    [case] = [c for c in corpus.argv_cases() if c.id == case_id]
    result = subprocess.run(server.cli_args(*paths.fill(case.argv)), capture_output=True, text=True, timeout=60,
                            env=server.env)
    assert result.returncode == 2, result.stderr
    assert_clear(result.stderr, case.mentions)
    probe.assert_untouched()


def test_a_bad_manifest_through_the_real_executable(server, probe, paths, tmp_path):
    [case] = [c for c in corpus.manifest_cases() if c.id == "bomb-billion-laughs"]
    result = subprocess.run(server.cli_args("train", str(write(tmp_path, case)), str(paths.model)),
                            capture_output=True, text=True, timeout=60, env=server.env)
    assert result.returncode == 2 and result.stdout == ""
    assert_clear(result.stderr, case.mentions)
    probe.assert_untouched()
