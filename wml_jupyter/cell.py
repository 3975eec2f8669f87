"""A notebook cell as a training definition: ``train.py``, a manifest and the code zip.

The cell runs in a fresh process, far from the notebook, so it must be self-contained:
``check_names`` finds every name it uses but never defines (with the line) before anything is
submitted. ``TrainOptions`` are the ``%%wml train`` flags (defined in ``wml_core.train_options``);
``manifest`` writes them as an FfDL manifest with the wml extensions (hyperparameters, search).
"""

from __future__ import annotations

import ast
import builtins
import symtable
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from wml_core.errors import InvalidInput
from wml_core.train_options import TrainOptions, manifest_fields

from .codezip import SKIP_DIRS, zip_files

#: Names every module has without defining them.
MODULE_NAMES = {"__name__", "__file__", "__doc__", "__builtins__", "__spec__", "__loader__",
                "__package__", "__annotations__", "__path__", "__cached__"}
#: The file a cell becomes.
SCRIPT = "train.py"
#: The description of a definition written from a cell.
DESCRIPTION = "written by %%wml train"


# -- the static check -------------------------------------------------------------------------

def undefined_names(source: str, first_line: int = 1) -> list[tuple[int, str]]:
    """``(line, name)`` for each name the code reads but never binds, in order of first use;
    lines are counted from ``first_line`` (2 in a cell under its ``%%wml`` line)."""
    try:
        tree = ast.parse(source, SCRIPT)
        table = symtable.symtable(source, SCRIPT, "exec")
    except SyntaxError as err:
        raise InvalidInput(f"line {(err.lineno or 1) + first_line - 1}: {err.msg} (the cell must be plain "
                           f"Python: no magics or shell escapes)") from None
    if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(tree)):
        return []  # `from x import *` may define anything
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    bound |= _globals_bound_in_functions(table) | MODULE_NAMES | set(dir(builtins))
    wanted = _global_reads(table) - bound
    first: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in wanted and isinstance(node.ctx, (ast.Load, ast.Del)):
            first[node.id] = min(first.get(node.id, node.lineno), node.lineno)
    return sorted((line + first_line - 1, name) for name, line in first.items())


def _tables(table: symtable.SymbolTable) -> Iterable[symtable.SymbolTable]:
    yield table
    for child in table.get_children():
        yield from _tables(child)


def _global_reads(top: symtable.SymbolTable) -> set[str]:
    """Names read at module level, or read as globals from any nested scope."""
    names = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    for table in _tables(top):
        if table is not top:
            names |= {s.get_name() for s in table.get_symbols() if s.is_referenced() and s.is_global()}
    return names


def _globals_bound_in_functions(top: symtable.SymbolTable) -> set[str]:
    """Names a nested scope binds after ``global name``."""
    return {s.get_name() for t in _tables(top) if t is not top for s in t.get_symbols()
            if s.is_declared_global() and s.is_assigned()}


def check_names(source: str, notebook: Optional[dict[str, Any]] = None, first_line: int = 1) -> None:
    """Raise ``InvalidInput`` naming the first undefined name and its line (and any others)."""
    missing = undefined_names(source, first_line)
    if not missing:
        return
    line, name = missing[0]
    hint = ""
    if name == "run":
        hint = " (add `from wml_jupyter import run`)"
    elif notebook is not None and name in notebook:
        hint = " (it is a notebook variable: the cell runs elsewhere, so define or import it in the cell)"
    more = f"; also undefined: {', '.join(f'{n} (line {ln})' for ln, n in missing[1:])}" if missing[1:] else ""
    raise InvalidInput(f"line {line}: name '{name}' is not defined in this cell{hint}{more}")


# -- the definition ---------------------------------------------------------------------------

def manifest(opts: TrainOptions) -> str:
    """The FfDL manifest (YAML text) the options describe (``wml_core.train_options`` maps each
    option to its field)."""
    data = manifest_fields(opts)
    data["description"] = DESCRIPTION
    data["framework"]["command"] = f"python3 {SCRIPT}"
    return yaml.safe_dump(data, sort_keys=False)


def code_files(source: str, include: Iterable[str] = ()) -> dict[str, bytes]:
    """``train.py`` plus each included file, or directory (under its own name)."""
    files = {SCRIPT: source.encode()}
    for item in include:
        path = Path(item).expanduser()
        if path.is_file():
            files[path.name] = path.read_bytes()
        elif path.is_dir():
            files.update((f"{path.name}/{p.relative_to(path).as_posix()}", p.read_bytes())
                         for p in sorted(path.rglob("*"))
                         if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(path).parts))
        else:
            raise InvalidInput(f"--include {item}: no such file or directory")
    return files


def definition(source: str, opts: TrainOptions, notebook: Optional[dict[str, Any]] = None,
               first_line: int = 1) -> tuple[str, bytes]:
    """Check the cell and return ``(manifest text, code zip)``."""
    check_names(source, notebook, first_line)
    text = manifest(opts)
    return text, zip_files(code_files(source, opts.include))
