"""``rundb.base.trusted`` builds models the way ``model_construct`` does, minus its per-field
work: it sets pydantic's own attributes, so a pydantic release that changes them must fail here,
not in a listing that then serializes, copies or compares runs wrongly."""

from __future__ import annotations

from datetime import datetime, timezone

from wml_backend.rundb.base import trusted
from wml_core.models import Run, Transition
from wml_core.states import RunState

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def a_run() -> dict:
    built = Run(id="e1-r1", experiment_id="e1", account="team_a", name="r1", state=RunState.PROCESSING,
                hparams={"lr": 0.1}, metrics={"step": 3, "loss": 0.5}, created=NOW,
                transitions=[Transition(state=RunState.QUEUED, time=NOW)])
    return dict(built.__dict__)


def test_a_trusted_run_is_what_model_construct_makes():
    values = a_run()
    fast, slow = trusted(Run, dict(values)), Run.model_construct(**values)
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_extra == slow.model_extra
    assert fast.model_copy(update={"state": RunState.COMPLETED}).state is RunState.COMPLETED
    assert Run.model_validate_json(fast.model_dump_json()) == slow


def test_a_trusted_transition_serializes_as_a_validated_one():
    fast = trusted(Transition, {"state": RunState.QUEUED, "time": NOW, "attempt": 2})
    assert fast == Transition(state="QUEUED", time=NOW, attempt=2)
    assert fast.model_dump_json() == Transition(state="QUEUED", time=NOW, attempt=2).model_dump_json()
