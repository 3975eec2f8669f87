"""A run's directories, and moving code, data and results in and out of them."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from wml_core.errors import InvalidInput, StorageError
from wml_core.models import RunSpec
from wml_core.objectstore import SCOPED_STORE, ObjectStore, StoreConfig, open_store


@dataclass(frozen=True)
class Workspace:
    """The directories FfDL gives a run, under one root."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def checkpoints(self) -> Path:
        """Kept across attempts of the same run, so that training can resume."""
        return self.root / "checkpoints"

    @property
    def home(self) -> Path:
        """``HOME`` and ``TMPDIR`` of a command that runs as a user of its own."""
        return self.root / "home"

    def training_log(self, learner: int = 1) -> Path:
        """Where a learner's stdout and stderr go."""
        return self.root / f"learner-{learner}" / "training-log.txt"

    def folders(self, learners: int = 1) -> list[Path]:
        """The folders the command writes in (all but the root, which holds the runner's log)."""
        logs = [self.training_log(k).parent for k in range(1, learners + 1)]
        return [self.model, self.data, self.results, self.logs, self.state, self.checkpoints, self.home, *logs]

    def metrics_file(self, learner: int = 1) -> Path:
        """Where a learner's ``run.log`` points go for the runner to ship."""
        return self.state / f"wml-metrics-{learner}.jsonl"

    @property
    def stop_file(self) -> Path:
        """Created by the runner to ask the command to stop at its next ``run.log`` step; in the
        root, which stays the runner's: the command may see it, not make or move it."""
        return self.root / "stop"

    @property
    def _fresh_mark(self) -> Path:
        """Says that the folders were made by ``make_ahead`` and nothing has used them since; in the
        root, which only the runner may write in."""
        return self.root / ".fresh"

    def make_ahead(self) -> None:
        """Make the root, the folders and the files of an attempt of one learner now, before any
        run is in view (each takes a journal write: ~1 ms in all); the next ``reset`` keeps them."""
        self.root.mkdir(mode=0o700)
        for path in self.folders():
            path.mkdir(mode=0o700)  # the command's alone (``isolation.hand_over``)
        for path in (self.training_log(1), self.metrics_file(1)):
            make_file(path)
        self._fresh_mark.touch(mode=0o600)

    def reset(self, learners: int = 1) -> None:
        """Fresh directories for an attempt (checkpoints excepted), not asked to stop: those that
        ``make_ahead`` made are fresh already."""
        made = self._take_fresh()
        if not made:
            self.stop_file.unlink(missing_ok=True)
        for path in self.folders(learners):
            if path in made:
                continue
            if path != self.checkpoints:
                shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=path == self.checkpoints)

    def _take_fresh(self) -> list[Path]:
        """The folders ``make_ahead`` made, if nothing has used them yet (none then, from now on)."""
        try:
            self._fresh_mark.unlink()
        except FileNotFoundError:
            return []
        return self.folders()


def make_file(path: Path) -> None:
    """Make ``path`` an empty file unless it is a file already, which is left as it is (a
    ``touch`` of it would change its time: a write to the disk's journal)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))


#: The spec of the run of nothing that idle runners rehearse with (``rehearse``, ``reporter.warm_up``).
REHEARSAL_SPEC = RunSpec(run_id="warm-up", experiment_id="warm-up", attempt=1, command="true", hparams={}, gpus=0,
                         learners=1, framework="custom", store={}, results_bucket="warm-up",
                         results_prefix="training-warm-up/")


#: Where idle runners rehearse, if the host has it: in memory. What a rehearsal is for is the
#: runner's own memory (``rehearse``); its dozens of folder operations cost milliseconds of CPU
#: on a disk's file system, on every runner.
REHEARSAL_PARENT = Path("/dev/shm")


def rehearse() -> None:
    """Go once through what every run's folder sees (made fresh, its code unpacked, its results
    stored to a file store), in a folder of its own then deleted: the memory this touches is
    this process's own before a run waits on it (``wml_runner.reporter``'s rehearsal says why)."""
    parent = REHEARSAL_PARENT if os.access(REHEARSAL_PARENT, os.W_OK | os.X_OK) else None
    with tempfile.TemporaryDirectory(prefix="wml-warm-up-", dir=parent) as folder:
        ws = Workspace(Path(folder) / "run")
        ws.reset()
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("train.py", "")
        unpack_code(code.getvalue(), ws.model)
        spec = REHEARSAL_SPEC.model_copy(update={"store": {"kind": "file", "root": folder}})
        ws.training_log(1).write_text("")
        store = open_run_store(spec)
        store_code(store, spec, code.getvalue())
        store_results(store, spec, ws)


def unpack_code(archive: bytes, dest: Path) -> None:
    """Unzip the code into ``dest``, refusing entries that would land outside it."""
    root = dest.resolve()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise InvalidInput(f"code: zip entry {info.filename!r} points outside the model directory")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = info.external_attr >> 16
            if mode & 0o111:  # executable for its owner; readable by whom the umask allows (none, locally)
                target.chmod(target.stat().st_mode | stat.S_IXUSR)


#: Store credentials an executor hands the runner as environment variables (the Kubernetes
#: executor, from the run's Secret); they win over the spec's, which may then leave them out.
CREDENTIAL_ENV = {"access_key": "WML_STORE_ACCESS_KEY", "secret_key": "WML_STORE_SECRET_KEY"}


def open_run_store(spec: RunSpec, credential: Optional[Callable[[], dict]] = None) -> ObjectStore:
    """The object store the run's data and results live in (credentials from the env first). The
    backend's default store is reached with a scoped credential that ``credential`` fetches, and
    fetches again before it expires, never with keys of the environment."""
    fields = {k: spec.store.get(k) for k in ("kind", "root", "endpoint", "region", "access_key", "secret_key",
                                             "anonymous")}
    config = {k: v for k, v in fields.items() if v is not None}
    if spec.store.get(SCOPED_STORE):
        if credential is None:
            raise StorageError("this run's store credential comes from its backend, which was not asked")
        from wml_core.objectstore.s3 import S3Store, refreshing_credentials
        return S3Store(StoreConfig(**config), credentials=refreshing_credentials(credential))
    config.update({k: os.environ[v] for k, v in CREDENTIAL_ENV.items() if os.environ.get(v)})
    return open_store(StoreConfig(**config))


def scoped_env(store: ObjectStore) -> dict[str, str]:
    """The variables that hand the training command the run's scoped credential, as boto3 and
    the AWS tools read them (none unless the store has one): it may read its data and write its
    results itself. Valid until the credential expires (``WML_STORE_CREDENTIAL_SECONDS``)."""
    credentials = getattr(store, "credentials", None)
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    endpoint = {"AWS_ENDPOINT_URL_S3": store.config.endpoint} if store.config.endpoint else {}
    return {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
            "AWS_SESSION_TOKEN": frozen.token, **endpoint}


def fetch_data(store: ObjectStore, spec: RunSpec, ws: Workspace, in_place: bool = True) -> Path:
    """``DATA_DIR``: the data in place when the store is local (and ``in_place``: the command
    may read the store's files), else a streamed copy."""
    if not spec.data_bucket:
        return ws.data
    local = store.local_path(spec.data_bucket, spec.data_prefix)
    if local is not None and in_place:
        return local
    from wml_core.objectstore.sync import download
    download(store, spec.data_bucket, spec.data_prefix, ws.data)
    return ws.data


def store_code(store: ObjectStore, spec: RunSpec, code: bytes) -> None:
    """Upload the submitted code with the results (under ``training-<id>/``: ``store_results``)."""
    store.put_bytes(spec.results_bucket, f"{spec.results_prefix}_submitted_code/model.zip", code)


def store_results(store: ObjectStore, spec: RunSpec, ws: Workspace) -> None:
    """Upload ``RESULT_DIR`` and the training logs under ``training-<id>/`` (the submitted code
    beside them: ``store_code``)."""
    from wml_core.objectstore.sync import upload
    prefix = spec.results_prefix
    if _holds_files(ws.results):  # nothing to sync otherwise (the logs below make the bucket)
        upload(store, ws.results, spec.results_bucket, prefix.rstrip("/"))
    for learner in range(1, spec.learners + 1):
        log = ws.training_log(learner)
        if log.exists():
            store.put_file(spec.results_bucket, f"{prefix}learner-{learner}/training-log.txt", log)


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but (empty) folders."""
    return any(files for _, _, files in os.walk(folder))


def store_learner_log(store: ObjectStore, spec: RunSpec, ws: Workspace, learner: int) -> None:
    """Upload one learner's training log (a learner k > 1 running in a pod of its own)."""
    log = ws.training_log(learner)
    if log.exists():
        store.put_file(spec.results_bucket, f"{spec.results_prefix}learner-{learner}/training-log.txt", log)


#: Where a run's ``CHECKPOINT_DIR`` is kept between attempts, under its results prefix: an
#: attempt that a disruption ended (a node drain, Kueue preemption) resumes from it on another node.
CHECKPOINT_PREFIX = "_checkpoints"


def store_checkpoints(store: ObjectStore, spec: RunSpec, ws: Workspace) -> None:
    """Upload ``CHECKPOINT_DIR`` (if the command wrote anything there) for the run's next attempt."""
    if not ws.checkpoints.is_dir() or not any(ws.checkpoints.iterdir()):
        return
    from wml_core.objectstore.sync import upload
    upload(store, ws.checkpoints, spec.results_bucket, f"{spec.results_prefix}{CHECKPOINT_PREFIX}")


def restore_checkpoints(store: ObjectStore, spec: RunSpec, ws: Workspace) -> None:
    """A later attempt on a fresh disk (another pod): fetch the checkpoints an earlier one stored.
    An attempt that still has them (the local executor keeps the run's folder) keeps its own."""
    if spec.attempt <= 1 or any(ws.checkpoints.iterdir()):
        return
    from wml_core.objectstore.sync import download
    download(store, spec.results_bucket, f"{spec.results_prefix}{CHECKPOINT_PREFIX}", ws.checkpoints)
