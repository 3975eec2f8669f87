"""What the ``/wml/`` routes exchange with the sidebar, beyond the backend's wire model.

Runs, experiments, usage and log chunks are ``wml_core.models`` unchanged, and the pages of them
``wml_core.pages``; this module adds the envelopes around them. ``labextension/src/model.ts``
mirrors every class here field by field.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field, ValidationError

from wml_core.errors import InvalidInput
from wml_core.pages import PAGE_SIZE, ExperimentPage, RunPage, Summary  # noqa: F401 (the wire's pages)
from wml_core.train_options import default_of


class Snapshot(Summary):
    """Everything the sidebar shows at once: the backend's ``Summary`` (account usage, experiments,
    expanded runs), and which backend and page size."""

    backend: str
    page_size: int = PAGE_SIZE


class SnapshotQuery(BaseModel):
    """Which pages the sidebar wants: ``offset`` of experiments, and expanded experiment → run offset."""

    offset: int = Field(0, ge=0)
    expanded: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def from_args(cls, offset: str, expand: list[str]) -> "SnapshotQuery":
        """Read ``?offset=N&expand=EXP:OFFSET&expand=...`` (an absent offset is 0)."""
        try:
            pairs = (item.partition(":") for item in expand)
            return cls(offset=int(offset or 0), expanded={exp: int(off or 0) for exp, _, off in pairs})
        except (ValueError, ValidationError):
            raise InvalidInput("offset and expand offsets must be whole numbers ≥ 0") from None


class TrainDefaults(BaseModel):
    """The "Train this cell" dialog's options, each defaulting as ``%%wml train``'s flag does
    (both from ``wml_core.train_options``); ``GET /wml/train`` gives the dialog these defaults."""

    name: str = Field(default_of("name"), min_length=1, max_length=100)
    #: GPUs per learner.
    gpus: int = Field(default_of("gpus"), ge=0, le=64)
    framework: str = default_of("framework")
    #: Training data bucket (``training_data.container``) in the configured default store.
    data: Optional[str] = default_of("data")
    #: Hyperparameter flags, as ``--sweep``: ``lr=loguniform(1e-4,1e-1)``.
    sweep: list[str] = Field(default_factory=lambda: default_of("sweep"))
    runs: Optional[int] = Field(default_of("runs"), ge=1, le=1000)
    #: The metric the search compares runs by (None: no best run is named).
    metric: Optional[str] = Field(default_of("metric"), max_length=100)
    #: Whether a larger or smaller metric is better.
    mode: str = default_of("mode")


class TrainRequest(TrainDefaults):
    """A notebook cell to submit as ``%%wml train`` would, with the dialog's options."""

    code: str


def parse_body(model: type[BaseModel], body: bytes) -> BaseModel:
    """A request body as ``model``; a bad one is ``InvalidInput`` naming the first bad field."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None
