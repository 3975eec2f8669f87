"""Hyperparameter spaces: read them (manifest YAML or ``--sweep`` flags) and draw assignments.

A space maps each hyperparameter name to a :class:`ParamSpec`. The same forms are accepted in
a manifest and on the command line::

    lr: {loguniform: [1.0e-4, 1.0e-1]}     --sweep 'lr=loguniform(1e-4,1e-1)'
    batch: [32, 64, 128]                   --sweep 'batch=[32,64,128]'
    opt: {choice: [adam, sgd]}             --sweep 'opt=choice(adam,sgd)'
    dropout: {uniform: [0.0, 0.5]}         --sweep 'dropout=uniform(0,0.5)'
    layers: {int: [1, 4]}                  --sweep 'layers=int(1,4)'       (both ends included)
    x: {quniform: [0, 1, 0.25]}            --sweep 'x=quniform(0,1,0.25)'
    seed: 3                                --sweep 'seed=3'                (a fixed value)

Drawing points from a space (random, TPE) and stopping runs early are ``search.py``'s work.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Mapping
from typing import Any

from wml_core.definition import ParamSpec
from wml_core.errors import InvalidInput, quoted

#: Distribution names a manifest or flag may use, and the ParamSpec kind each one means.
KINDS = {"choice": "choice", "uniform": "uniform", "loguniform": "loguniform",
         "int": "int", "randint": "int", "quniform": "quniform"}
#: Numbers each range takes: (required, optional) arguments.
ARITY = {"uniform": (2, 0), "loguniform": (2, 0), "int": (2, 1), "quniform": (3, 0)}
#: Runs an experiment makes when neither the caller nor the manifest says how many.
DEFAULT_RUNS = 10
#: The most runs one experiment may have (also Search.runs' upper bound).
MAX_RUNS = 1000
#: Random startup points a TPE search needs before it can model anything (Optuna's default).
TPE_STARTUP = 10
#: Hyperparameter names: usable as ``${name}`` in a command and as a Python identifier.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SpaceError(ValueError):
    """Specs that cannot be sampled. ``errors`` lists (path, message); a path is relative to the
    space, e.g. ``("lr", "loguniform")``, so a manifest reader can find its line."""

    def __init__(self, errors: list[tuple[tuple, str]], where: str = "hyperparameters"):
        self.errors = errors
        super().__init__("\n".join(f"{_dotted(where, path)}: {msg}" for path, msg in errors))


def _dotted(where: str, path: tuple) -> str:
    return ".".join([where, *map(str, path)]) if where else ".".join(map(str, path))


# ---- reading specs -----------------------------------------------------------------------

def parse_space(raw: Mapping, where: str = "hyperparameters") -> dict[str, ParamSpec]:
    """Read a whole space, reporting every bad parameter at once (as one :class:`SpaceError`)."""
    if not isinstance(raw, Mapping):
        raise SpaceError([((), "must be a mapping of name: spec, e.g. lr: {uniform: [0, 1]}")],
                         where)
    specs, errors = {}, []
    for name, value in raw.items():
        try:
            specs[name] = parse_param(name, value)
        except SpaceError as err:
            errors += err.errors
    if errors:
        raise SpaceError(errors, where)
    return specs


def parse_param(name: Any, value: Any) -> ParamSpec:
    """One parameter: a list (a choice), ``{distribution: args}``, or a scalar (a fixed value)."""
    if not isinstance(name, str) or not NAME.match(name):
        _fail((name,), "a hyperparameter name must be letters, digits and _ (not starting with "
                       "a digit), so the command can use it as ${name}")
    if isinstance(value, Mapping):
        return _from_mapping(name, value)
    if value is None:
        _fail((name,), "has no value: give a value, a list or {distribution: [...]}")
    return _choice((name,), value if isinstance(value, list) else [value])


def _fail(path: tuple, message: str):
    raise SpaceError([(path, message)])


def _from_mapping(name: str, value: Mapping) -> ParamSpec:
    """``{loguniform: [1e-4, 1e-1]}`` and its kin: exactly one known distribution."""
    if len(value) != 1:
        _fail((name,), f"give exactly one distribution, e.g. {{uniform: [0, 1]}} "
                       f"(got {len(value)} keys)")
    [(dist, args)] = value.items()
    if dist not in KINDS:
        close = difflib.get_close_matches(str(dist), KINDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        _fail((name, dist), f"unknown distribution {quoted(dist)}; {hint}use one of {', '.join(KINDS)}")
    kind = KINDS[dist]
    if kind == "choice":
        if not isinstance(args, list):
            _fail((name, dist), "choice needs a list of values, e.g. {choice: [adam, sgd]}")
        return _choice((name, dist), args)
    return _range((name, dist), kind, args)


def _choice(path: tuple, values: list) -> ParamSpec:
    if not values:
        _fail(path, "an empty list has nothing to choose from")
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            _fail(path, f"choice values must be finite numbers (got {value})")
        if not isinstance(value, (str, int, float, bool)):
            _fail(path, f"choice values must be numbers, strings or booleans "
                        f"(got {type(value).__name__})")
    return ParamSpec(kind="choice", values=list(values))


def _range(path: tuple, kind: str, args: Any) -> ParamSpec:
    """A numeric range: check shape and bounds, and return its ParamSpec."""
    required, optional = ARITY[kind]
    shape = {"quniform": "[low, high, step]", "int": "[low, high] or [low, high, step]"}.get(
        kind, "[low, high]")
    if not isinstance(args, list) or not required <= len(args) <= required + optional:
        _fail(path, f"{path[-1]} needs {shape}, got {quoted(args)}")
    whole = kind == "int"
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, int if whole else (int, float)):
            _fail(path, f"{path[-1]} bounds must be {'whole ' if whole else ''}numbers, "
                        f"got {quoted(arg)}")
        if not _finite(arg):
            _fail(path, f"{path[-1]} bounds must be finite, got {quoted(arg)}")
    low, high, step = (list(args) + [None])[:3]
    if low >= high:
        _fail(path, f"low ({low}) must be less than high ({high}); write a fixed value plainly")
    if kind == "loguniform" and low <= 0:
        _fail(path, f"loguniform needs low > 0 (got {low}): a log scale cannot reach 0")
    if step is not None and step <= 0:
        _fail(path, f"step must be positive (got {step})")
    if step is not None and not _finite((high - low) / step):
        _fail(path, f"the range has too many steps of {step:g}: use a larger step")
    return ParamSpec(kind=kind, low=low, high=high, step=step)


def _finite(number: float) -> bool:
    """Whether ``number`` is finite as a float (an int too big for a float is not)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False



# ---- command-line flags ------------------------------------------------------------------

_FLAG = re.compile(r"\s*([^=\s]+)\s*=\s*(.*?)\s*\Z", re.S)
_CALL = re.compile(r"([A-Za-z_]+)\s*\((.*)\)\Z", re.S)
_BRACKETS = re.compile(r"[][()]")


def parse_sweep_flag(text: str) -> tuple[str, ParamSpec]:
    """``'lr=loguniform(1e-4,1e-1)'`` → ``("lr", ParamSpec(...))``; see the module docstring."""
    match = _FLAG.match(text)
    if not match or not match.group(2):
        raise InvalidInput(f"--sweep {quoted(text)}: expected NAME=SPEC, e.g. lr=loguniform(1e-4,1e-1)")
    name, spec = match.groups()
    try:
        return name, parse_param(name, _flag_value(spec))
    except SpaceError as err:
        raise InvalidInput(f"--sweep {quoted(text)}: {err.errors[0][1]}") from None


def _flag_value(spec: str) -> Any:
    """The YAML-equivalent value of a flag's right-hand side."""
    call = _CALL.match(spec)
    if call:
        return {call.group(1): _flag_list(call.group(2))}
    if spec.startswith("[") and spec.endswith("]"):
        return _flag_list(spec[1:-1])
    return _flag_scalar(spec)


def _flag_list(text: str) -> list:
    return [_flag_scalar(item) for item in text.split(",")] if text.strip() else []


def _flag_scalar(token: str) -> Any:
    """``3`` → 3, ``1e-4`` → 0.0001, ``true`` → True, ``'a b'`` → 'a b', ``adam`` → 'adam'."""
    token = token.strip()
    if _BRACKETS.search(token):
        raise SpaceError([((), f"cannot read {quoted(token)}: write func(a,b), [a,b] or one value")])
    for convert in (int, float):
        try:
            return convert(token)
        except ValueError:
            pass
    if token.lower() in ("true", "false"):
        return token.lower() == "true"
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


# ---- finiteness and grids ----------------------------------------------------------------

def is_finite(space: Mapping[str, ParamSpec]) -> bool:
    """True when every parameter has a finite list of values (so a grid can cover it)."""
    return all(spec.kind in ("choice", "int", "quniform") for spec in space.values())


def count_values(spec: ParamSpec) -> int:
    """How many values a finite parameter has (without listing them: ranges may be huge)."""
    if spec.kind == "choice":
        return len(spec.values)
    return math.floor((spec.high - spec.low) / (spec.step or 1) + 1e-9) + 1


def _values(spec: ParamSpec) -> list:
    """Every value of a finite parameter, in increasing (or listed) order."""
    if spec.kind == "choice":
        return list(spec.values)
    if spec.kind == "int":
        return [int(spec.low) + k * int(spec.step or 1) for k in range(count_values(spec))]
    return [round(spec.low + k * spec.step, 12) for k in range(count_values(spec))]


def describe(spec: ParamSpec) -> str:
    """A spec as a flag would write it: ``loguniform(0.0001, 0.1)``, ``[32, 64]``."""
    if spec.kind == "choice":
        return "[" + ", ".join(map(str, spec.values)) + "]"
    args = [spec.low, spec.high] + ([spec.step] if spec.step is not None else [])
    return f"{spec.kind}({', '.join(f'{a:g}' for a in args)})"


def grid_size(space: Mapping[str, ParamSpec]) -> int:
    """The number of points in the full grid (InvalidInput if the space is not finite)."""
    infinite = [f"{name} is {describe(spec)}" for name, spec in space.items()
                if not is_finite({name: spec})]
    if infinite:
        raise InvalidInput("grid search needs finite choices: " + "; ".join(infinite) +
                           " (use a list, int or quniform)")
    return math.prod(count_values(spec) for spec in space.values())


def grid(space: Mapping[str, ParamSpec]) -> list[dict]:
    """Every combination, the first parameter varying slowest (deterministic, manifest order)."""
    size = grid_size(space)
    if size > MAX_RUNS:
        raise InvalidInput(f"the grid has {size} points; an experiment may have at most "
                           f"{MAX_RUNS} runs: use fewer values or random search")
    names = list(space)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(_values(space[n]) for n in names))]
