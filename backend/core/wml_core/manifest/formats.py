"""The two manifest layouts, FfDL (ManifestV1) and Watson ML, read into Definition fields.

Each format's sections are read with a ``Reader`` into the keyword arguments of a
``Definition`` (definition.py); the sections both formats share (framework, command, a
bucket/prefix container) are read by the same helpers. Extension sections are not read here
(manifest_extensions.py).
"""

from __future__ import annotations

import re

from wml_core.definition import Connection, DataStore, EvaluationMetrics, Location
from wml_core.manifest.extensions import EXTENSIONS
from wml_core.manifest.reader import Reader

#: Upper bounds of resources, far above any real machine, so that a typo (or a hostile
#: manifest) is an error rather than a number too big to store.
MAX_GPUS = 1024
MAX_LEARNERS = 1024
MAX_CPUS = 4096

#: Top-level fields of each format; EXTENSIONS are accepted in both.
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


# ---- FfDL --------------------------------------------------------------------------------

def read_ffdl(r: Reader) -> dict:
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


def _framework(r: Reader, path: tuple, fields: tuple) -> dict:
    """Framework name (lowercased: any name validates, submit says what it cannot run)."""
    if r.section(path, fields, required=True) is None:
        return {}
    name = r.text(path + ("name",), required=True)
    return dict(framework=name and name.lower(), framework_version=r.text(path + ("version",)))


def _command(r: Reader, path: tuple) -> dict:
    """The shell command on one line: as in FfDL, newlines (folded ``>`` blocks) are spaces."""
    command = r.text(path, required=True)
    if command is not None:
        command = re.sub(r"\s*\n\s*", " ", command).strip()
        if not command:
            r.problem(path, "must not be empty")
    return dict(command=command)


def _ffdl_store(r: Reader) -> DataStore | None:
    """The first of ``data_stores`` (all are checked); None: the configured default store."""
    stores = r.get(("data_stores",))
    if stores is None:
        return None
    if not isinstance(stores, list):
        r.problem(("data_stores",), "must be a list of data stores (- id: ..., type: ...)")
        return None
    read = [_ffdl_one_store(r, ("data_stores", index)) for index in range(len(stores))]
    return read[0] if read else None


def _ffdl_one_store(r: Reader, path: tuple) -> DataStore | None:
    """One entry of ``data_stores``; its type, if not given, follows from its connection."""
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


def _ffdl_connection(r: Reader, path: tuple) -> Connection | None:
    """``auth_url/user_name/password/region`` (S3), or ``type: host_mount`` with a ``path``."""
    if not r.section(path, CONNECTION_FIELDS):
        return None
    get = lambda key: r.secret(path + (key,))  # noqa: E731
    return Connection(endpoint=get("auth_url"), access_key=get("user_name"),
                      secret_key=get("password"), region=get("region"), path=get("path"))


def _container(r: Reader, path: tuple, key: str = "container") -> Location | None:
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


def _ffdl_metrics(r: Reader) -> EvaluationMetrics | None:
    """Where the job writes its metrics (``evaluation_metrics``); None if absent."""
    path = ("evaluation_metrics",)
    if r.section(path, METRICS_FIELDS) is None:
        return None
    kind = r.text(path + ("type",)) or "tensorboard"
    return EvaluationMetrics(type=kind.lower(), path=r.text(path + ("in",)) or "")


# ---- Watson ML ----------------------------------------------------------------------------

def read_wml(r: Reader) -> dict:
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


def _compute(r: Reader, path: tuple) -> dict:
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


def _wml_store(r: Reader) -> DataStore | None:
    """Both references as one data store (the data reference's connection wins)."""
    data, data_conn = _wml_reference(r, ("training_data_reference",), "source")
    results, results_conn = _wml_reference(r, ("training_results_reference",), "target")
    if data is None and results is None:
        return None
    name = r.text(("training_data_reference", "name")) or "default"
    return DataStore(id=name, type="s3_datastore", training_data=data,
                     training_results=results, connection=data_conn or results_conn)


def _wml_reference(r: Reader, path: tuple,
                   side: str) -> tuple[Location | None, Connection | None]:
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
