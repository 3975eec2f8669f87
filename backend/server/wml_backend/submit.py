"""Turn a client's request into a stored experiment of QUEUED runs (or a clear refusal)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import lzma
import os
import secrets
import stat
import string
import struct
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from wml_core.definition import Connection, DataStore, Definition, Location, ParamSpec, Search, StoredDefinition
from wml_core.errors import InvalidInput, QuotaExceeded, StorageError, quoted
from wml_core.manifest import load_manifest
from wml_core.models import ExperimentRequest
from wml_backend.ownership import folder
from wml_backend.settings import HOST_PATHS_ENV, MAX_CODE_BYTES, Settings
from wml_backend.search.decisions import sample
from wml_core.search_space import parse_sweep_flag
from wml_core.states import RunState
from wml_core.objectstore import StoreConfig, open_store
from wml_backend.rundb import Account, ExperimentRow, RunRow

_ID_ALPHABET = string.ascii_lowercase + string.digits
#: Most data objects whose checksums a run's provenance records.
MAX_PROVENANCE_OBJECTS = 1000
#: Most bytes of data read to checksum it for a run's provenance (the file store hashes its files;
#: S3 keeps ETags and reads none): a couple of seconds of hashing, never a huge tree's hours.
MAX_PROVENANCE_BYTES = 1 << 30
#: Seconds a submission waits for its data's checksums; past that, its provenance says they are incomplete.
PROVENANCE_WAIT_S = 10.0
#: The threads that checksum data, off the request threads: a slow or stuck file system holds one
#: of these for a while, never a thread that answers requests.
_CHECKSUMS = ThreadPoolExecutor(2, thread_name_prefix="wml-provenance")
#: Most bytes a code zip may unpack to: far more than model code needs, far less than a bomb.
MAX_UNPACKED_BYTES = 1 << 30
#: What reading a malformed or hostile zip raises (zipfile does not wrap them all).
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, OverflowError, struct.error, NotImplementedError,
               RuntimeError, zlib.error, lzma.LZMAError, UnicodeDecodeError)


@dataclass
class NewExperiment:
    """Everything ``RunStore.insert_experiment`` takes."""

    experiment: ExperimentRow
    runs: list[RunRow]
    code: bytes
    secret: Optional[dict]


def new_id(length: int = 6) -> str:
    """A short random id that reads well in a terminal."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def decode_code(code_b64: str) -> bytes:
    """The submitted code zip, checked: a readable zip with no entry escaping its folder,
    no links, and no more than MAX_UNPACKED_BYTES once unpacked (no zip bomb)."""
    try:
        data = base64.b64decode(code_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("code: not valid base64") from None
    if len(data) > MAX_CODE_BYTES:
        raise InvalidInput(f"code: the zip is {len(data) / 2**20:.1f} MiB; the limit is {MAX_CODE_BYTES >> 20} MiB")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_entries(archive.infolist())
            bad = archive.testzip()
    except _ZIP_ERRORS:
        raise InvalidInput("code: not a readable zip archive") from None
    if bad is not None:
        raise InvalidInput(f"code: zip entry {quoted(bad)} is corrupt")
    return data


def _check_entries(entries: list[zipfile.ZipInfo]) -> None:
    """Refuse entries that would land outside the model directory, links, encrypted entries
    and archives that unpack to more than MAX_UNPACKED_BYTES."""
    for info in entries:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise InvalidInput(f"code: zip entry {quoted(name)} points outside the model directory")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"code: zip entry {quoted(name)} is a symbolic link; zip the files it points to")
        if info.flag_bits & 0x1:
            raise InvalidInput(f"code: zip entry {quoted(name)} is encrypted")
    unpacked = sum(info.file_size for info in entries)
    if unpacked > MAX_UNPACKED_BYTES:
        raise InvalidInput(f"code: the zip unpacks to {unpacked >> 20} MiB; the limit is "
                           f"{MAX_UNPACKED_BYTES >> 20} MiB")



def store_config_for(definition: Definition, default: StoreConfig, host_paths: tuple[str, ...] = ()) -> StoreConfig:
    """The object store a definition's data store names (its connection), or the default one.

    A host path (``mount_volume``, ``host_mount``, a ``file`` store's path) must lie in one of
    ``host_paths``, the operator's allow-list. An S3 connection without credentials is called
    unsigned: never with the backend's own credentials, whatever endpoint it names."""
    store = definition.data_store
    conn = store.connection if store else None
    if conn is None:
        return default
    if conn.path:
        check_host_paths(store, host_paths)
        return StoreConfig(kind="file", root=conn.path)
    access_key, secret_key = _credentials(conn)
    return StoreConfig(kind="s3", endpoint=conn.endpoint, region=conn.region, access_key=access_key,
                       secret_key=secret_key, anonymous=access_key is None)


def _credentials(conn: Connection) -> tuple[Optional[str], Optional[str]]:
    """A connection's key pair: both keys or neither."""
    keys = tuple(key.get_secret_value() if key else None for key in (conn.access_key, conn.secret_key))
    if (keys[0] is None) != (keys[1] is None):
        raise InvalidInput("data store: connection gives one key of a pair; give both the access key "
                           "(user_name) and the secret key (password), or neither")
    return keys


def check_host_paths(store: DataStore, allowed: tuple[str, ...]) -> None:
    """Refuse a host path that is not in the operator's allow-list, once links are resolved: the
    store's folder, and its data and results folders in it (a link inside could point elsewhere)."""
    root = store.connection.path
    folders = [root] + [os.path.join(root, loc.bucket, loc.prefix)
                        for loc in (store.training_data, store.training_results) if loc is not None]
    for path in folders:
        real = os.path.realpath(path)
        if not any(real == top or real.startswith(top.rstrip("/") + "/") for top in allowed):
            where = f"only {', '.join(allowed)}" if allowed else "none"
            raise InvalidInput(f"data store: host path {quoted(root)} is not allowed; the operator allows "
                               f"{where} ({HOST_PATHS_ENV})")


def with_results(definition: Definition, default: tuple[str, str]) -> Definition:
    """The definition with its results location filled in from the default when it names none."""
    ds = definition.data_store or DataStore()
    if ds.training_results is not None:
        return definition
    results = Location(bucket=default[0], prefix=default[1])
    return definition.model_copy(update={"data_store": ds.model_copy(update={"training_results": results})})


def check_storage(definition: Definition, config: StoreConfig) -> None:
    """Fail now, not in a run, if the data bucket is missing or the store unusable."""
    store = open_store(config)
    ds = definition.data_store
    if ds.training_data:
        store.check_bucket(ds.training_data.bucket)
    results = ds.training_results.bucket
    if not store.bucket_exists(results):
        try:
            store.create_bucket(results)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot create results bucket {results!r} at {config.describe()}: "
                               f"{type(exc).__name__}") from None


def build_experiment(account: Account, request: ExperimentRequest, settings: Settings, offline: bool = False,
                     check_data: Optional[Callable[[Definition], None]] = None) -> NewExperiment:
    """Validate a request and build its experiment and runs; nothing is stored yet.

    ``offline``: leave the data store alone (a dry run): no check that its buckets are there, and
    no data checksums in the provenance. ``check_data``: refuses a definition on the default store
    that names data or a results location the account may not use (``ownership``).
    """
    default_store = settings.store_config
    definition = with_results(load_manifest(request.manifest, request.manifest_name, env=request.env),
                              settings.default_results)
    code = decode_code(request.code_zip_b64)
    need = definition.gpus * definition.learners
    if need > account.gpu_quota:
        raise QuotaExceeded(f"each run asks for {need} GPUs but account {account.name!r} may hold "
                            f"at most {account.gpu_quota}")
    space = dict(definition.hyperparameters)
    space.update(parse_sweep_flag(flag) for flag in request.sweep)
    runs_wanted = request.runs or definition.search.runs
    assignments = sample(space, definition.search, runs_wanted) if space else [{}] * (runs_wanted or 1)
    # What was searched is stored with the experiment: flags included, so decisions can be replayed.
    definition = definition.model_copy(update={
        "hyperparameters": space,
        "search": definition.search.model_copy(update={"runs": runs_wanted or len(assignments)})})
    config = store_config_for(definition, default_store, settings.host_paths)
    if not offline:
        if config == default_store and check_data is not None:
            check_data(definition)
        check_storage(definition, config)
    secret = None if config == default_store else {**config.public(), "access_key": config.access_key,
                                                    "secret_key": config.secret_key}
    return assemble(account, definition, assignments, code, secret, provenance(definition, code, config, offline))


def assemble(account: Account, definition: Definition, assignments: list[dict], code: bytes,
             secret: Optional[dict], origin: dict) -> NewExperiment:
    """An experiment row and its first runs, ready to insert."""
    exp_id, now = new_id(), time.time()
    experiment = ExperimentRow(id=exp_id, account=account.name, name=definition.name,
                               definition=StoredDefinition.of(definition, origin),
                               metric=definition.search.metric, mode=definition.search.mode, created=now)
    total = max(definition.search.runs or 0, len(assignments))
    return NewExperiment(experiment, run_rows(experiment, assignments, first=1, total=total), code, secret)


def run_rows(experiment: ExperimentRow, assignments: list[dict], first: int, total: int) -> list[RunRow]:
    """QUEUED runs of ``experiment`` for ``assignments``, numbered from ``first`` of ``total``."""
    d = experiment.definition
    results = d.data_store.training_results
    bucket, prefix = results.bucket, results.prefix.strip("/")
    width = max(2, len(str(total)))
    created = datetime.now(timezone.utc)
    rows = []
    for index, hparams in enumerate(assignments, start=first):
        run_id = f"{experiment.id}-{index:0{width}d}"
        rows.append(RunRow(
            id=run_id, experiment_id=experiment.id, account=experiment.account, name=f"{experiment.name}-{index}",
            state=RunState.QUEUED, hparams=hparams, gpus=d.gpus, learners=d.learners, created=created,
            results=f"{bucket}/{prefix + '/' if prefix else ''}training-{run_id}/", max_retries=d.max_retries,
            cpus=d.cpus, memory_bytes=d.memory_bytes))
    return rows


def provenance(definition: Definition, code: bytes, config: StoreConfig, offline: bool = False) -> dict:
    """What a run needs to be reproduced: code hash, data checksums (none ``offline``; whether they
    are all of the data's), framework and seed."""
    ds = definition.data_store
    etags, complete = {}, True
    if ds and ds.training_data and not offline:
        etags, complete = data_checksums(config, ds.training_data)
    return {"code_sha256": hashlib.sha256(code).hexdigest(), "data_etags": etags, "data_etags_complete": complete,
            "framework": definition.framework, "framework_version": definition.framework_version,
            "seed": definition.search.seed}


def data_checksums(config: StoreConfig, data: Location) -> tuple[dict[str, str], bool]:
    """The ETags of the data a run reads, by key, and whether they are all of them: computed off
    the request thread, within MAX_PROVENANCE_OBJECTS, MAX_PROVENANCE_BYTES and PROVENANCE_WAIT_S."""
    store = open_store(config)
    job = _CHECKSUMS.submit(store.checksums, data.bucket, folder(data.prefix), MAX_PROVENANCE_OBJECTS,
                            MAX_PROVENANCE_BYTES)
    try:
        return job.result(timeout=PROVENANCE_WAIT_S)
    except Pending:
        job.cancel()  # not begun yet: never begun; begun: it ends within its bounds
        return {}, False


def rerun_of(account: Account, experiment: ExperimentRow, hparams: dict, code: bytes,
             secret: Optional[dict]) -> NewExperiment:
    """A one-run experiment repeating ``hparams`` of ``experiment`` with its code and data."""
    definition = experiment.definition
    origin = definition.provenance
    definition = definition.model_copy(update={
        "hyperparameters": {k: ParamSpec(kind="choice", values=[v]) for k, v in hparams.items()},
        "search": Search(algorithm="grid", runs=1, metric=definition.search.metric, mode=definition.search.mode,
                         seed=definition.search.seed)})
    return assemble(account, definition, [hparams], code, secret, {**origin, "rerun_of": experiment.id})
