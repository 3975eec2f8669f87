"""A training definition as the backend understands it, whatever format it was written in.

``manifest.py`` reads FfDL (ManifestV1) and Watson ML manifests into a ``Definition``; the
rest of the backend only ever sees this model.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr

#: Parameter distributions a hyperparameter may be drawn from.
Distribution = Literal["choice", "uniform", "loguniform", "int", "quniform"]


class Connection(BaseModel):
    """How to reach an S3-compatible store. Credentials are secrets: never shown or stored plain."""

    model_config = ConfigDict(frozen=True)
    endpoint: Optional[str] = None
    access_key: Optional[SecretStr] = None
    secret_key: Optional[SecretStr] = None
    region: Optional[str] = None
    #: For ``mount_volume``/``host_mount``: a local directory (or hostPath on Kubernetes).
    path: Optional[str] = None


class Location(BaseModel):
    """A bucket and an optional key prefix inside it (``bucket/prefix`` in manifests)."""

    model_config = ConfigDict(frozen=True)
    bucket: str
    prefix: str = ""


class DataStore(BaseModel):
    """Where training data is read from and results are written to."""

    model_config = ConfigDict(frozen=True)
    id: str = "default"
    type: str = "file"  # mount_cos | s3_datastore | file | mount_volume
    training_data: Optional[Location] = None
    training_results: Optional[Location] = None
    #: None: the backend's configured default store.
    connection: Optional[Connection] = None


class ParamSpec(BaseModel):
    """One hyperparameter's space: a choice among ``values``, or a range ``low``..``high``."""

    model_config = ConfigDict(frozen=True)
    kind: Distribution
    values: list[Any] = Field(default_factory=list)  # for choice
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None  # for quniform / int


class EarlyStopping(BaseModel):
    """Stop runs that fall behind (ASHA or median rule) so their GPUs go to queued runs."""

    model_config = ConfigDict(frozen=True)
    type: Literal["asha", "median"] = "asha"
    min_steps: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    #: The step runs train to: no rung at or beyond it (a finished run is never stopped).
    max_steps: Optional[int] = Field(None, ge=1)


class Search(BaseModel):
    """How an experiment explores its hyperparameter space."""

    model_config = ConfigDict(frozen=True)
    algorithm: Literal["grid", "random", "tpe"] = "random"
    runs: Optional[int] = Field(None, ge=1, le=1000)
    metric: Optional[str] = None
    mode: Literal["max", "min"] = "max"
    seed: Optional[int] = None
    early_stopping: Optional[EarlyStopping] = None


class EvaluationMetrics(BaseModel):
    """FfDL's evaluation_metrics: where the run writes metrics we should read."""

    model_config = ConfigDict(frozen=True)
    type: str = "tensorboard"  # tensorboard | emetrics_file
    path: str = ""  # FfDL's ``in``


class Definition(BaseModel):
    """A validated training definition (manifest side; the code travels separately)."""

    model_config = ConfigDict(frozen=True)
    format: Literal["ffdl", "wml"] = "ffdl"
    name: str
    description: str = ""
    version: Optional[str] = None
    framework: str
    framework_version: Optional[str] = None
    command: str
    gpus: int = Field(0, ge=0)
    gpu_type: Optional[str] = None
    cpus: float = Field(1.0, gt=0)
    memory_bytes: Optional[int] = Field(None, gt=0)
    learners: int = Field(1, ge=1)
    data_store: Optional[DataStore] = None
    evaluation_metrics: Optional[EvaluationMetrics] = None
    hyperparameters: dict[str, ParamSpec] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    max_retries: int = Field(0, ge=0, le=100)
    #: Seconds a run may take before it ends FAILED "timed out after ..."; None: no limit.
    timeout_s: Optional[float] = Field(None, gt=0)

    def redacted(self) -> dict:
        """This definition as JSON with every credential replaced by ``***``: safe to store and show."""
        data = self.model_dump(mode="json")
        conn = (data.get("data_store") or {}).get("connection")
        if conn:
            for key in ("access_key", "secret_key"):
                if conn.get(key):
                    conn[key] = "***"
        return data


class StoredDefinition(Definition):
    """A definition as the run store keeps it: credentials redacted, with its provenance.

    Rows written by older versions read back too: a field they lack takes its default here.
    """

    #: What reproduces its runs: code hash, data checksums, framework, seed (and ``rerun_of``).
    provenance: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, definition: Definition, provenance: dict[str, Any]) -> "StoredDefinition":
        """``definition`` as stored: its credentials replaced by ``***``, with ``provenance``."""
        return cls.model_validate({**definition.redacted(), "provenance": provenance})
