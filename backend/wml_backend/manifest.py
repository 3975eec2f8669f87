"""Read FfDL (ManifestV1) and Watson ML manifests into a ``Definition`` (definition.py).

Every problem of a manifest is reported at once, each as ``file:line: field: problem`` with the
line of the field it is about (a missing field: the line of the mapping that should hold it).
The YAML is composed into nodes and walked here, rather than loaded, so that lines are known,
duplicate keys are caught (plain PyYAML keeps the last silently) and a YAML bomb is refused
quickly. Credentials may be ``${ENV_VAR}`` references, resolved at load time; no message ever
contains a credential's value.
"""

from __future__ import annotations

__all__ = ["ManifestError", "Problem", "load_manifest", "load_manifest_file", "manifest_format",
           "parse_memory", "read_manifest_text"]

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import space
from .definition import (
    Connection,
    DataStore,
    Definition,
    EarlyStopping,
    EvaluationMetrics,
    Location,
    Search,
)
from .manifest_yaml import ManifestError, Problem, YamlTree, field_name

#: Upper bounds of resources, far above any real machine, so that a typo (or a hostile
#: manifest) is an error rather than a number too big to store.
MAX_GPUS = 1024
MAX_LEARNERS = 1024
MAX_CPUS = 4096
MAX_MEMORY_BYTES = 2**60

#: Top-level fields of each format; EXTENSIONS are accepted in both.
EXTENSIONS = ("hyperparameters", "search", "max_retries")
FFDL_FIELDS = ("name", "description", "version", "gpus", "gpu_type", "cpus", "memory", "storage",
               "learners", "data_stores", "framework", "evaluation_metrics") + EXTENSIONS
WML_FIELDS = ("model_definition", "training_data_reference",
              "training_results_reference") + EXTENSIONS
#: Fields inside FfDL sections (image_tag, line_lookahead... are FfDL's own, read and ignored).
FRAMEWORK_FIELDS = ("name", "version", "image_tag", "command")
STORE_FIELDS = ("id", "type", "training_data", "training_results", "connection")
STORE_TYPES = ("mount_cos", "s3_datastore", "file", "mount_volume")
CONNECTION_FIELDS = ("auth_url", "user_name", "password", "region", "type", "name", "path",
                     "bucket")
METRICS_FIELDS = ("type", "in", "image_tag", "line_lookahead", "eventTypes", "groups")
#: Fields inside Watson ML sections.
MODEL_FIELDS = ("name", "description", "author", "framework", "execution", "definition_href")
WML_FRAMEWORK_FIELDS = ("name", "version", "runtimes")
REFERENCE_FIELDS = ("name", "type", "connection", "source", "target")
WML_CONNECTION = {"endpoint_url": "endpoint", "access_key_id": "access_key",
                  "aws_access_key_id": "access_key", "secret_access_key": "secret_key",
                  "aws_secret_access_key": "secret_key", "region": "region"}
#: Extension sections.
SEARCH_FIELDS = ("algorithm", "runs", "metric", "mode", "seed", "early_stopping")
EARLY_STOPPING_FIELDS = ("type", "min_steps", "reduction_factor", "max_steps")

GB = 10**9
#: Watson ML compute_configuration names: (GPUs, CPUs, memory in GB, GPU type).
COMPUTE_SIZES = {
    "small": (1, 6, 12, None), "medium": (2, 12, 24, None), "large": (4, 24, 48, None),
    "k80": (1, 4, 24, "nvidia-TeslaK80"), "k80x2": (2, 8, 48, "nvidia-TeslaK80"),
    "k80x4": (4, 16, 96, "nvidia-TeslaK80"), "p100": (1, 4, 24, "nvidia-TeslaP100"),
    "p100x2": (2, 8, 48, "nvidia-TeslaP100"), "v100": (1, 4, 24, "nvidia-TeslaV100"),
    "v100x2": (2, 8, 48, "nvidia-TeslaV100"),
}
#: Watson ML's default when a manifest names no compute_configuration.
DEFAULT_COMPUTE = "k80"

#: Memory units (case-insensitive): FfDL's Mb/MB/MiB/Gb/GB/GiB and Kubernetes' Mi/Gi/M/G.
MEMORY_UNITS = {"k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
                "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
                "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
                "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")
_NAME = re.compile(r"[A-Za-z0-9 ._-]+\Z")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---- public API ----------------------------------------------------------------------------

def load_manifest(text: str, filename: str = "manifest.yml",
                  env: Mapping[str, str] | None = None) -> Definition:
    """Read a manifest of either format; ManifestError lists every problem at once."""
    tree = YamlTree(text, filename)
    reader = _Reader(tree, os.environ if env is None else env)
    fmt = _format(tree.data)
    fields = (_read_wml if fmt == "wml" else _read_ffdl)(reader)
    fields.update(_read_extensions(reader))
    if not tree.problems:
        try:
            return Definition(format=fmt, **fields)
        except ValidationError as err:  # a safety net: the readers check all of this first
            for error in err.errors():
                reader.problem((), f"{'.'.join(map(str, error['loc']))}: {error['msg']}")
    raise ManifestError(tree.problems)


def load_manifest_file(path: str | os.PathLike,
                       env: Mapping[str, str] | None = None) -> Definition:
    """Read a manifest file (UTF-8); an unreadable file is a ManifestError too."""
    return load_manifest(read_manifest_text(path), str(path), env)


def read_manifest_text(path: str | os.PathLike) -> str:
    """A manifest file's text (UTF-8, with or without a BOM); a file that cannot be read, or is
    not UTF-8, is a ManifestError naming it."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ManifestError([Problem(name, 1, "manifest", f"cannot read: {err.strerror}")]) \
            from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ManifestError([Problem(name, line, "manifest", f"not UTF-8 text (byte "
                                     f"0x{data[err.start]:02x}); save the file as UTF-8")]) \
            from None


def manifest_format(text: str) -> str:
    """``"wml"`` for a Watson ML manifest (top-level model_definition), else ``"ffdl"``."""
    try:
        return _format(YamlTree(text, "manifest").data)
    except ManifestError:
        return "ffdl"


def parse_memory(value: Any) -> int:
    """Bytes in a memory size: ``4Gb``/``4GB`` = 4e9, ``4GiB``/``4Gi`` = 4·2³⁰, ``512Mi``;
    a bare number is MB. ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a size such as 512Mi, 4Gi, 4GB or 4096 (MB)")
    text = str(value)
    match = _MEMORY.match(text)
    if text.strip().startswith("-"):
        raise ValueError(f"must be positive (got {text!r})")
    unit = match and MEMORY_UNITS.get(match.group(2).lower() or "mb")
    if not unit:
        raise ValueError(f"{text!r} is not a memory size: write a number and a unit such as "
                         f"512Mi, 4Gi, 4Gb or 4GB (a bare number is MB)")
    size = float(match.group(1)) * unit
    if not size < MAX_MEMORY_BYTES:
        raise ValueError(f"{_shown(text)} is more memory than any machine has")
    if int(size) <= 0:
        raise ValueError(f"must be positive (got {text!r})")
    return int(size)


def _shown(value: Any) -> str:
    """A wrong (non-secret) value as a message shows it: short, and collections by kind."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _format(data: Any) -> str:
    return "wml" if isinstance(data, dict) and "model_definition" in data else "ffdl"



# ---- typed reading ------------------------------------------------------------------------------

class _Reader:
    """Typed getters over a YamlTree: a bad field becomes a Problem and the getter's default."""

    def __init__(self, tree: YamlTree, env: Mapping[str, str]):
        self.tree, self.env = tree, env

    def line(self, path: tuple) -> int:
        while path not in self.tree.lines:
            path = path[:-1]
        return self.tree.lines[path]

    def problem(self, path: tuple, message: str) -> None:
        self.tree.problems.append(Problem(self.tree.filename, self.line(path), field_name(path),
                                          message))

    def get(self, path: tuple) -> Any:
        """The value at ``path``, or None (absent, null, or under something not a mapping)."""
        value = self.tree.data
        for key in path:
            if isinstance(value, dict):
                value = value.get(key)
            elif isinstance(value, list) and isinstance(key, int) and key < len(value):
                value = value[key]
            else:
                return None
        return value

    def section(self, path: tuple, fields: tuple, required: bool = False) -> dict | None:
        """A mapping whose keys must be among ``fields`` (a typo names the closest one)."""
        value = self.get(path)
        if value is None:
            if required:
                self.problem(path, "is required")
            return None
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping with fields such as {', '.join(fields[:4])}")
            return None
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(fields)}"
                self.problem(path + (key,), f"unknown field; {hint}")
        return value

    def text(self, path: tuple, required: bool = False) -> str | None:
        """A scalar as written (``version: 1.10`` is "1.10"); never echoed in messages."""
        value = self.get(path)
        if value is None or value == "":
            if required:
                self.problem(path, "is required" if value is None else "must not be empty")
            return None
        if isinstance(value, (dict, list)):
            self.problem(path, "must be a single value, not a list or mapping")
            return None
        return value if isinstance(value, str) else self.tree.raw.get(path, str(value))

    def secret(self, path: tuple) -> str | None:
        """A credential or endpoint: text with ``${ENV_VAR}`` references resolved from env."""
        value = self.text(path)
        if value is None:
            return None
        for name in _ENV_REF.findall(value):
            if name not in self.env:
                self.problem(path, f"environment variable {name} is not set")
        return _ENV_REF.sub(lambda m: self.env.get(m.group(1), ""), value)

    def choice(self, path: tuple, options: tuple, default: str | None) -> str | None:
        """One of ``options`` (case-insensitive, returned lowercased)."""
        value = self.text(path)
        if value is None:
            return default
        if value.lower() not in options:
            self.problem(path, f"must be one of {', '.join(options)} (got {value!r})")
            return default
        return value.lower()

    def whole(self, path: tuple, default: int | None, low: int,
              high: int | None = None) -> int | None:
        """A whole number in [low, high]; 2.0 counts as 2, but 1.5, "two" and true do not."""
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be a whole number (got {_shown(value)})")
        elif value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"{low} or more"
            self.problem(path, f"must be {bounds} (got {_shown(value)})")
        else:
            return value
        return default

    def positive(self, path: tuple, default: float, high: float) -> float:
        """A number above 0 and at most ``high`` (FfDL's cpus: 0.5 is fine)."""
        value = self.get(path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(path, f"must be a number (got {_shown(value)})")
        elif not 0 < value <= high:
            self.problem(path, f"must be a positive number up to {high:g} (got {_shown(value)})")
        else:
            return value
        return default

    def memory(self, path: tuple) -> int | None:
        """A memory size in bytes (see parse_memory)."""
        value = self.get(path)
        if value is None:
            return None
        try:
            return parse_memory(value)
        except ValueError as err:
            self.problem(path, str(err))
            return None

    def name(self, path: tuple) -> str | None:
        """The definition's name: required, at most 100 of [A-Za-z0-9 ._-]."""
        value = self.text(path, required=True)
        if value is not None and not _NAME.match(value):
            self.problem(path, f"may use only letters, digits, spaces and . _ - (got {value!r})")
        elif value is not None and len(value) > 100:
            self.problem(path, f"is {len(value)} characters long; the limit is 100")
        return value


# ---- FfDL --------------------------------------------------------------------------------

def _read_ffdl(r: _Reader) -> dict:
    """Definition fields from an FfDL ManifestV1."""
    r.section((), FFDL_FIELDS)
    r.memory(("storage",))  # FfDL's scratch storage: checked, not used
    framework = _framework(r, ("framework",), FRAMEWORK_FIELDS)
    if framework:
        framework.update(_command(r, ("framework", "command")))
    return dict(
        name=r.name(("name",)), description=r.text(("description",)) or "",
        version=r.text(("version",)),
        gpus=r.whole(("gpus",), 0, 0, MAX_GPUS), gpu_type=r.text(("gpu_type",)),
        cpus=r.positive(("cpus",), 1.0, MAX_CPUS), memory_bytes=r.memory(("memory",)),
        learners=r.whole(("learners",), 1, 1, MAX_LEARNERS),
        data_store=_ffdl_store(r), evaluation_metrics=_ffdl_metrics(r), **framework)


def _framework(r: _Reader, path: tuple, fields: tuple) -> dict:
    """Framework name (lowercased: any name validates, submit says what it cannot run)."""
    if r.section(path, fields, required=True) is None:
        return {}
    name = r.text(path + ("name",), required=True)
    return dict(framework=name and name.lower(), framework_version=r.text(path + ("version",)))


def _command(r: _Reader, path: tuple) -> dict:
    """The shell command on one line: as in FfDL, newlines (folded ``>`` blocks) are spaces."""
    command = r.text(path, required=True)
    if command is not None:
        command = re.sub(r"\s*\n\s*", " ", command).strip()
        if not command:
            r.problem(path, "must not be empty")
    return dict(command=command)


def _ffdl_store(r: _Reader) -> DataStore | None:
    """The first of ``data_stores`` (all are checked); None: the configured default store."""
    stores = r.get(("data_stores",))
    if stores is None:
        return None
    if not isinstance(stores, list):
        r.problem(("data_stores",), "must be a list of data stores (- id: ..., type: ...)")
        return None
    read = [_ffdl_one_store(r, ("data_stores", index)) for index in range(len(stores))]
    return read[0] if read else None


def _ffdl_one_store(r: _Reader, path: tuple) -> DataStore | None:
    if r.section(path, STORE_FIELDS, required=True) is None:
        return None
    kind = r.choice(path + ("type",), STORE_TYPES, None)
    connection = _ffdl_connection(r, path + ("connection",))
    if kind == "mount_volume" and not (connection and connection.path):
        r.problem(path + ("connection",), "mount_volume needs connection.path (a directory)")
    kind = kind or ("mount_volume" if connection and connection.path else
                    "mount_cos" if connection else "file")
    return DataStore(id=r.text(path + ("id",)) or "default", type=kind, connection=connection,
                     training_data=_container(r, path + ("training_data",)),
                     training_results=_container(r, path + ("training_results",)))


def _ffdl_connection(r: _Reader, path: tuple) -> Connection | None:
    """``auth_url/user_name/password/region`` (S3), or ``type: host_mount`` with a ``path``."""
    if not r.section(path, CONNECTION_FIELDS):
        return None
    get = lambda key: r.secret(path + (key,))  # noqa: E731
    return Connection(endpoint=get("auth_url"), access_key=get("user_name"),
                      secret_key=get("password"), region=get("region"), path=get("path"))


def _container(r: _Reader, path: tuple, key: str = "container") -> Location | None:
    """``{container: bucket/prefix}`` (WML: ``{bucket: ...}``) as a Location."""
    if r.section(path, (key,)) is None:
        return None
    value = r.text(path + (key,), required=True)
    if value is None:
        return None
    bucket, _, prefix = value.strip("/").partition("/")
    if not bucket:
        r.problem(path + (key,), "needs a bucket name (bucket or bucket/prefix)")
        return None
    if {".", ".."} & set(value.replace("\\", "/").split("/")):
        r.problem(path + (key,), "must not contain . or .. segments: name a bucket and a prefix inside it")
        return None
    return Location(bucket=bucket, prefix=prefix.strip("/"))


def _ffdl_metrics(r: _Reader) -> EvaluationMetrics | None:
    path = ("evaluation_metrics",)
    if r.section(path, METRICS_FIELDS) is None:
        return None
    kind = r.text(path + ("type",)) or "tensorboard"
    return EvaluationMetrics(type=kind.lower(), path=r.text(path + ("in",)) or "")


# ---- Watson ML ----------------------------------------------------------------------------

def _read_wml(r: _Reader) -> dict:
    """Definition fields from a Watson ML manifest (``model_definition:`` and references)."""
    r.section((), WML_FIELDS)
    model = ("model_definition",)
    if r.section(model, MODEL_FIELDS, required=True) is None:
        return {}
    execution = model + ("execution",)
    found = r.section(execution, ("command", "compute_configuration"), required=True)
    return dict(name=r.name(model + ("name",)),
                description=r.text(model + ("description",)) or "",
                data_store=_wml_store(r),
                **_compute(r, execution + ("compute_configuration",)),
                **_framework(r, model + ("framework",), WML_FRAMEWORK_FIELDS),
                **(_command(r, execution + ("command",)) if found is not None else {}))


def _compute(r: _Reader, path: tuple) -> dict:
    """GPUs, CPUs, memory and GPU type for a compute_configuration name; ``nodes`` = learners."""
    r.section(path, ("name", "nodes"))
    size = r.text(path + ("name",)) or DEFAULT_COMPUTE
    if size.lower() not in COMPUTE_SIZES:
        r.problem(path + ("name",), f"unknown compute configuration {size!r}; "
                  f"use one of {', '.join(COMPUTE_SIZES)}")
        return {}
    gpus, cpus, memory_gb, gpu_type = COMPUTE_SIZES[size.lower()]
    return dict(gpus=gpus, cpus=cpus, memory_bytes=memory_gb * GB, gpu_type=gpu_type,
                learners=r.whole(path + ("nodes",), 1, 1, MAX_LEARNERS))


def _wml_store(r: _Reader) -> DataStore | None:
    """Both references as one data store (the data reference's connection wins)."""
    data, data_conn = _wml_reference(r, ("training_data_reference",), "source")
    results, results_conn = _wml_reference(r, ("training_results_reference",), "target")
    if data is None and results is None:
        return None
    name = r.text(("training_data_reference", "name")) or "default"
    return DataStore(id=name, type="s3_datastore", training_data=data,
                     training_results=results, connection=data_conn or results_conn)


def _wml_reference(r: _Reader, path: tuple, side: str):
    """(Location, Connection) of one reference; (None, None) if absent."""
    if r.section(path, REFERENCE_FIELDS) is None:
        return None, None
    r.choice(path + ("type",), ("s3",), "s3")
    location = _container(r, path + (side,), key="bucket")
    if r.get(path + (side,)) is None:
        r.problem(path + (side,), f"is required ({side}: {{bucket: NAME}})")
    conn = path + ("connection",)
    if not r.section(conn, tuple(WML_CONNECTION)):
        return location, None
    values = {ours: r.secret(conn + (theirs,)) for theirs, ours in WML_CONNECTION.items()
              if r.get(conn + (theirs,)) is not None}
    return location, Connection(**values)


# ---- extensions ---------------------------------------------------------------------------

def _read_extensions(r: _Reader) -> dict:
    """hyperparameters, search and max_retries (the same in both formats)."""
    params = _hyperparameters(r)
    return dict(hyperparameters=params, search=_search(r, params),
                max_retries=r.whole(("max_retries",), 0, 0, 100))


def _hyperparameters(r: _Reader) -> dict:
    raw = r.get(("hyperparameters",))
    if raw is None:
        return {}
    try:
        return space.parse_space(raw)
    except space.SpaceError as err:
        for path, message in err.errors:
            r.problem(("hyperparameters",) + path, message)
        return {}


def _search(r: _Reader, params: dict) -> Search:
    path = ("search",)
    if r.section(path, SEARCH_FIELDS) is None:
        return Search()
    search = Search(algorithm=r.choice(path + ("algorithm",), ("grid", "random", "tpe"), "random"),
                    runs=r.whole(path + ("runs",), None, 1, space.MAX_RUNS),
                    metric=r.text(path + ("metric",)),
                    mode=r.choice(path + ("mode",), ("max", "min"), "max"),
                    seed=r.whole(path + ("seed",), None, 0, 2**32 - 1),
                    early_stopping=_early_stopping(r, path + ("early_stopping",)))
    _check_search(r, search, params)
    return search


def _early_stopping(r: _Reader, path: tuple) -> EarlyStopping | None:
    if r.section(path, EARLY_STOPPING_FIELDS) is None:
        return None
    return EarlyStopping(type=r.choice(path + ("type",), ("asha", "median"), "asha"),
                         min_steps=r.whole(path + ("min_steps",), 1, 1, 10**9),
                         reduction_factor=r.whole(path + ("reduction_factor",), 3, 2, 100),
                         max_steps=r.whole(path + ("max_steps",), None, 1, 10**9))


def _check_search(r: _Reader, search: Search, params: dict) -> None:
    """What only the search and the space together can tell: a grid must be finite and fit."""
    if search.metric is None and (search.algorithm == "tpe" or search.early_stopping):
        why = "tpe search" if search.algorithm == "tpe" else "early_stopping"
        r.problem(("search", "metric"), f"{why} needs the metric to optimise (metric: NAME)")
    if search.algorithm != "grid":
        return
    infinite = [name for name, spec in params.items() if not space.is_finite({name: spec})]
    for name in infinite:
        r.problem(("hyperparameters", name), f"grid search needs finite choices: "
                  f"{space.describe(params[name])} has none; use a list, int or quniform")
    if infinite:
        return
    size = space.grid_size(params)
    if size > space.MAX_RUNS:
        r.problem(("search", "algorithm"), f"the grid has {size} points; the limit is "
                  f"{space.MAX_RUNS} runs")
    elif search.runs is not None and search.runs < size:
        r.problem(("search", "runs"), f"the grid has {size} points but runs is {search.runs}: "
                  f"raise runs (or drop it) or shrink the grid")
