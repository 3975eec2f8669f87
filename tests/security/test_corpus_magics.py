"""The bad-input corpus through the ``%wml`` magics in a real IPython shell: the cell fails with
one ``WmlError`` line, no traceback, and nothing stored."""

from __future__ import annotations

import shlex

import corpus
import pytest
from checks import assert_clear
from ipython_shell import new_shell

pytest.importorskip("wml_jupyter.magics", reason="the magics are not there yet")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from wml_core.errors import WmlError  # noqa: E402

GRID = corpus.GOOD_MANIFEST + "search: {algorithm: grid}\n"


@pytest.fixture(scope="module")
def shell(server, tmp_path_factory):
    """A fresh IPython shell with ``%load_ext wml_jupyter``, talking to the corpus' backend."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        yield new_shell()
        InteractiveShell.clear_instance()


def fails_clearly(shell: InteractiveShell, source: str, capsys, mentions: tuple[str, ...]) -> WmlError:
    """Run a cell that must fail with one clear ``WmlError`` line; return the error."""
    capsys.readouterr()
    result = shell.run_cell(source)
    shown = capsys.readouterr()
    assert not result.success, f"the cell succeeded: {source[:200]}"
    error = result.error_in_exec or result.error_before_exec
    assert isinstance(error, WmlError), f"{type(error).__name__}: {error}"
    assert shown.out.strip() == f"{type(error).__name__}: {error}".strip() or str(error) in shown.out
    assert "Traceback" not in shown.out + shown.err
    assert_clear(str(error), mentions)
    return error


#: The longest flag tried in a magic line: IPython's own ``$var`` expansion of a line takes
#: time quadratic in its length (a 20,000-character line takes seconds) before wml sees it.
MAX_MAGIC_FLAG = 10_000


def magic_sweeps() -> list[corpus.SweepCase]:
    """Sweep cases a notebook line can carry: one line, on the default or a plain grid manifest."""
    return [c for c in corpus.sweep_cases() if c.manifest in (corpus.GOOD_MANIFEST, GRID)
            and "\n" not in c.flag and "\x00" not in c.flag and len(c.flag) <= MAX_MAGIC_FLAG]


@pytest.mark.parametrize("case", corpus.manifest_cases(), ids=lambda c: c.id)
def test_train_line_refuses_a_bad_manifest(case, shell, probe, paths, tmp_path, capsys):
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    fails_clearly(shell, f"%wml train {path} {paths.model}", capsys, case.mentions[:1])
    probe.assert_untouched()


@pytest.mark.parametrize("case", magic_sweeps(), ids=lambda c: c.id)
def test_train_cell_refuses_a_bad_sweep(case, shell, probe, capsys):
    flags = f"--sweep {shlex.quote(case.flag)}" + (" --search grid" if case.manifest == GRID else "")
    flags += f" --runs {case.runs}" if case.runs else ""
    fails_clearly(shell, f"%%wml train {flags}\nprint(1)\n", capsys, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.zip_cases(), ids=lambda c: c.id)
def test_train_line_refuses_a_bad_code_zip(case, shell, probe, paths, tmp_path, capsys):
    archive = tmp_path / f"{case.id}.zip"
    archive.write_bytes(case.data)
    error = fails_clearly(shell, f"%wml train {paths.manifest} {archive}", capsys, ())
    assert "code" in str(error) or archive.name in str(error)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.cell_cases(), ids=lambda c: c.id)
def test_train_cell_refuses_bad_flags_or_code(case, shell, probe, capsys):
    fails_clearly(shell, f"%%wml train {case.flags}\n{case.cell}", capsys, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", [c for c in corpus.argv_cases() if c.magic], ids=lambda c: c.id)
def test_a_bad_magic_line_is_refused(case, shell, probe, paths, capsys):
    [line] = paths.fill((case.magic,))
    fails_clearly(shell, f"%wml {line}", capsys, case.mentions)
    probe.assert_untouched()
