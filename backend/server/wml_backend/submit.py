"""Turn a client's request into a stored experiment of QUEUED runs (or a clear refusal)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import lzma
import secrets
import stat
import string
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from .definition import DataStore, Definition, Location, ParamSpec, Search
from .errors import InvalidInput, QuotaExceeded, StorageError, quoted
from .manifest import load_manifest
from .models import ExperimentRequest
from .settings import MAX_CODE_BYTES
from .search import sample
from .space import parse_sweep_flag
from .storage import StoreConfig, open_store
from .store import Account, ExperimentRow, RunRow

_ID_ALPHABET = string.ascii_lowercase + string.digits
#: Most data objects whose checksums a run's provenance records.
MAX_PROVENANCE_OBJECTS = 1000
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



def store_config_for(definition: Definition, default: StoreConfig) -> StoreConfig:
    """The object store a definition's data store names (its connection), or the default one."""
    store = definition.data_store
    conn = store.connection if store else None
    if conn is None:
        return default
    if conn.path:
        return StoreConfig(kind="file", root=conn.path)
    return StoreConfig(kind="s3", endpoint=conn.endpoint, region=conn.region,
                       access_key=conn.access_key.get_secret_value() if conn.access_key else None,
                       secret_key=conn.secret_key.get_secret_value() if conn.secret_key else None)


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


def build_experiment(account: Account, request: ExperimentRequest, default_store: StoreConfig,
                     default_results: tuple[str, str], offline: bool = False) -> NewExperiment:
    """Validate a request and build its experiment and runs; nothing is stored yet.

    ``offline``: leave the data store alone (a dry run): no check that its buckets are there, and
    no data checksums in the provenance.
    """
    definition = with_results(load_manifest(request.manifest, request.manifest_name, env=request.env),
                              default_results)
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
    config = store_config_for(definition, default_store)
    if not offline:
        check_storage(definition, config)
    secret = None if config == default_store else {**config.public(), "access_key": config.access_key,
                                                    "secret_key": config.secret_key}
    return assemble(account, definition, assignments, code, secret, provenance(definition, code, config, offline))


def assemble(account: Account, definition: Definition, assignments: list[dict], code: bytes,
             secret: Optional[dict], origin: dict) -> NewExperiment:
    """An experiment row and its first runs, ready to insert."""
    exp_id, now = new_id(), time.time()
    experiment = ExperimentRow(id=exp_id, account=account.name, name=definition.name,
                               definition={**definition.redacted(), "provenance": origin},
                               metric=definition.search.metric, mode=definition.search.mode, created=now)
    total = max(definition.search.runs or 0, len(assignments))
    return NewExperiment(experiment, run_rows(experiment, assignments, first=1, total=total), code, secret)


def run_rows(experiment: ExperimentRow, assignments: list[dict], first: int, total: int) -> list[RunRow]:
    """QUEUED runs of ``experiment`` for ``assignments``, numbered from ``first`` of ``total``."""
    d = experiment.definition
    results = d["data_store"]["training_results"]
    bucket, prefix = results["bucket"], results.get("prefix", "").strip("/")
    width = max(2, len(str(total)))
    created = datetime.now(timezone.utc)
    rows = []
    for index, hparams in enumerate(assignments, start=first):
        run_id = f"{experiment.id}-{index:0{width}d}"
        rows.append(RunRow(
            id=run_id, experiment_id=experiment.id, account=experiment.account, name=f"{experiment.name}-{index}",
            state="QUEUED", hparams=hparams, gpus=d["gpus"], learners=d["learners"], created=created,
            results=f"{bucket}/{prefix + '/' if prefix else ''}training-{run_id}/", max_retries=d["max_retries"]))
    return rows


def provenance(definition: Definition, code: bytes, config: StoreConfig, offline: bool = False) -> dict:
    """What a run needs to be reproduced: code hash, data checksums (none ``offline``), framework and seed."""
    ds = definition.data_store
    etags: dict[str, str] = {}
    if ds and ds.training_data and not offline:
        for info in itertools.islice(open_store(config).list(ds.training_data.bucket, ds.training_data.prefix),
                                     MAX_PROVENANCE_OBJECTS):
            etags[info.key] = info.etag
    return {"code_sha256": hashlib.sha256(code).hexdigest(), "data_etags": etags,
            "framework": definition.framework, "framework_version": definition.framework_version,
            "seed": definition.search.seed}


def rerun_of(account: Account, experiment: ExperimentRow, hparams: dict, code: bytes,
             secret: Optional[dict]) -> NewExperiment:
    """A one-run experiment repeating ``hparams`` of ``experiment`` with its code and data."""
    stored = dict(experiment.definition)
    origin = stored.pop("provenance", {})
    definition = Definition.model_validate(stored)
    definition = definition.model_copy(update={
        "hyperparameters": {k: ParamSpec(kind="choice", values=[v]) for k, v in hparams.items()},
        "search": Search(algorithm="grid", runs=1, metric=definition.search.metric, mode=definition.search.mode,
                         seed=definition.search.seed)})
    return assemble(account, definition, [hparams], code, secret, {**origin, "rerun_of": experiment.id})
