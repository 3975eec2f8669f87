"""Turn a client's request into a stored experiment of QUEUED runs (or a clear refusal)."""

from __future__ import annotations

import base64
import binascii
import io
import secrets
import string
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from .definition import Definition
from .errors import InvalidInput, QuotaExceeded, StorageError
from .manifest import load_manifest
from .models import ExperimentRequest
from .settings import DEFAULT_RESULTS_BUCKET, MAX_CODE_BYTES
from .search import sample
from .space import parse_sweep_flag
from .storage import StoreConfig, open_store
from .store import Account, ExperimentRow, RunRow

_ID_ALPHABET = string.ascii_lowercase + string.digits


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
    """The submitted code zip, checked: a readable zip with no entry escaping its folder."""
    try:
        data = base64.b64decode(code_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("code: not valid base64") from None
    if len(data) > MAX_CODE_BYTES:
        raise InvalidInput(f"code: the zip is {len(data) >> 20} MiB; the limit is {MAX_CODE_BYTES >> 20} MiB")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                    raise InvalidInput(f"code: zip entry {name!r} points outside the model directory")
    except zipfile.BadZipFile:
        raise InvalidInput("code: not a zip archive") from None
    return data


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


def check_storage(definition: Definition, config: StoreConfig) -> None:
    """Fail now, not in a run, if the data bucket is missing or the store unusable."""
    store = open_store(config)
    ds = definition.data_store
    if ds and ds.training_data:
        store.check_bucket(ds.training_data.bucket)
    results = ds.training_results.bucket if ds and ds.training_results else DEFAULT_RESULTS_BUCKET
    if not store.bucket_exists(results):
        try:
            store.create_bucket(results)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot create results bucket {results!r} at {config.describe()}: "
                               f"{type(exc).__name__}") from None


def build_experiment(account: Account, request: ExperimentRequest, default_store: StoreConfig) -> NewExperiment:
    """Validate a request and build its experiment and runs; nothing is stored yet."""
    definition = load_manifest(request.manifest, request.manifest_name, env=request.env)
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
    check_storage(definition, config)
    secret = None if config == default_store else {**config.public(), "access_key": config.access_key,
                                                    "secret_key": config.secret_key}
    return _assemble(account, definition, assignments, code, secret)


def _assemble(account: Account, definition: Definition, assignments: list[dict], code: bytes,
              secret: Optional[dict]) -> NewExperiment:
    exp_id = new_id()
    now = time.time()
    ds = definition.data_store
    results_bucket = ds.training_results.bucket if ds and ds.training_results else DEFAULT_RESULTS_BUCKET
    results_prefix = ds.training_results.prefix if ds and ds.training_results else ""
    width = max(2, len(str(len(assignments))))
    runs = []
    for index, hparams in enumerate(assignments, start=1):
        run_id = f"{exp_id}-{index:0{width}d}"
        runs.append(RunRow(
            id=run_id, experiment_id=exp_id, account=account.name, name=f"{definition.name}-{index}",
            state="QUEUED", hparams=hparams, gpus=definition.gpus, learners=definition.learners,
            results=f"{results_bucket}/{results_prefix.strip('/') + '/' if results_prefix.strip('/') else ''}"
                    f"training-{run_id}/",
            created=datetime.fromtimestamp(now, timezone.utc), max_retries=definition.max_retries))
    experiment = ExperimentRow(id=exp_id, account=account.name, name=definition.name,
                               definition=definition.redacted(), metric=definition.search.metric,
                               mode=definition.search.mode, created=now)
    return NewExperiment(experiment, runs, code, secret)
