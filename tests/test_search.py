"""Search decisions: ASHA and median rungs on synthetic curves, TPE points, and an end-to-end
sweep where runs with a planted bad hyperparameter are STOPPED while good ones complete."""

from __future__ import annotations

import pytest

from test_cli_e2e import TINY, definition, submit
from wml_core.definition import EarlyStopping, ParamSpec, Search
from wml_backend.search.decisions import Trial, awaits_evidence, early_stop, next_points, rung_steps
from wml_backend.search.driver import SweepDriver

SPACE = {"q": ParamSpec(kind="uniform", low=0.0, high=1.0)}


def asha(mode: str = "max", rf: int = 3, kind: str = "asha") -> Search:
    return Search(algorithm="random", metric="acc", mode=mode,
                  early_stopping=EarlyStopping(type=kind, min_steps=1, reduction_factor=rf))


def arrive(search: Search, curves: list[dict[float, float]]) -> list[bool]:
    """Runs reaching their latest step one after another; whether each was stopped."""
    trials, stopped = {}, []
    for i, curve in enumerate(curves):
        trials[f"r{i}"] = Trial({"q": 0.5}, "running", curve)
        reason = early_stop(search, SPACE, trials, f"r{i}")
        stopped.append(reason is not None)
        if reason:
            trials[f"r{i}"].state = "stopped"
    return stopped


def test_rungs_grow_geometrically():
    assert rung_steps(asha(rf=3), 30) == [1, 3, 9, 27]
    assert rung_steps(asha(rf=2), 8) == [1, 2, 4, 8]
    assert rung_steps(asha(), 0.5) == []


def test_asha_keeps_the_top_third_at_a_rung():
    stopped = arrive(asha(), [{1: 0.5}, {1: 0.9}, {1: 0.1}, {1: 0.95}, {1: 0.2}, {1: 0.3}])
    assert stopped == [False, False, True, False, True, True]


def test_asha_promotes_none_of_the_first_runs_of_a_rung_before_the_bootstrap_count():
    search = asha()  # bootstrap count: the reduction factor, 3
    trials = {name: Trial({"q": 0.5}, "running", {}) for name in ("a", "b", "c")}
    trials["a"].curve = {1: 0.9}
    assert awaits_evidence(search, trials, "a"), "alone at rung 1 while two peers train"
    trials["b"].curve = {1: 0.5}
    assert awaits_evidence(search, trials, "a") and awaits_evidence(search, trials, "b")
    trials["c"].curve = {1: 0.1}
    assert not any(awaits_evidence(search, trials, name) for name in trials)
    assert [early_stop(search, SPACE, trials, name) is not None for name in trials] == [False, True, True]


def test_a_run_awaiting_evidence_trains_on_and_is_judged_at_that_rung_once_it_is_there():
    search, driver = asha(), SweepDriver(None, None)
    trials = {"lucky": Trial({"q": 0.5}, "running", {1: 0.3, 2: 0.3, 3: 0.3}),
              "b": Trial({"q": 0.5}, "running", {1: 0.6}), "c": Trial({"q": 0.5}, "running", {})}
    assert driver._judge(search, SPACE, trials, "lucky", [1, 3]) is None  # 2 of 3 at rung 1: it waits
    assert driver._checked.get("lucky", 0) == 0, "not promoted past rung 1"
    trials["c"].curve = {1: 0.9}
    reason = driver._judge(search, SPACE, trials, "lucky", [1, 3])
    assert reason.startswith("stopped by ASHA at step 1: acc 0.3 is below the cut-off 0.9")


def test_asha_judges_on_what_there_is_when_no_other_run_can_reach_the_rung():
    trials = {"done": Trial({"q": 0.5}, "completed", {1: 0.9, 3: 0.9}), "stopped": Trial({"q": 0.5}, "stopped", {}),
              "new": Trial({"q": 0.5}, "running", {1: 0.2})}
    assert not awaits_evidence(asha(), trials, "new")
    assert early_stop(asha(), SPACE, trials, "new") is not None


def test_asha_minimises_when_asked():
    stopped = arrive(asha(mode="min"), [{1: 0.5}, {1: 0.2}, {1: 0.9}])
    assert stopped == [False, False, True]


def test_reason_names_the_rung_value_and_cut_off():
    trials = {"a": Trial({"q": 0.1}, "completed", {1: 0.9, 3: 0.95}), "b": Trial({"q": 0.2}, "running", {1: 0.2})}
    reason = early_stop(asha(), SPACE, trials, "b")
    assert reason == "stopped by ASHA at step 1: acc 0.2 is below the cut-off 0.9 of the 2 runs that reached it"


def test_median_rule_stops_runs_below_the_median():
    trials = {f"r{i}": Trial({"q": 0.5}, "completed", {1: v, 2: v}) for i, v in enumerate([0.5, 0.6, 0.7, 0.8])}
    trials["new"] = Trial({"q": 0.5}, "running", {1: 0.1, 2: 0.1})
    assert early_stop(asha(kind="median"), SPACE, trials, "new").startswith("stopped by the median rule")
    trials["good"] = Trial({"q": 0.5}, "running", {1: 0.9, 2: 0.9})
    assert early_stop(asha(kind="median"), SPACE, trials, "good") is None


def test_tpe_points_are_in_the_space_and_reproducible():
    search = Search(algorithm="tpe", metric="acc", mode="max", seed=3)
    trials = [Trial({"q": q}, "completed", {1: 1 - abs(q - 0.7)}) for q in (0.1, 0.3, 0.5, 0.9, 0.65, 0.2)]
    first = next_points(SPACE, search, trials, 4)
    assert first == next_points(SPACE, search, trials, 4)
    assert all(0.0 <= p["q"] <= 1.0 for p in first)


def test_planted_bad_runs_are_stopped_and_good_ones_complete(backend, tmp_path):
    token = backend.cli("accounts", "create", "erin", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    manifest = definition(tmp_path, hyperparameters={"lr": [0.09, 0.1, 0.01, 0.005, 0.002], "steps": [9],
                                                     "sleep": [0.05]},
                          search={"algorithm": "grid", "metric": "acc", "mode": "max",
                                  "early_stopping": {"type": "asha", "min_steps": 1, "reduction_factor": 3}})
    exp_id = submit(backend, manifest, token=token)
    exp = backend.wait_experiment(exp_id, token=token)
    runs = {r["hparams"]["lr"]: r for r in backend.cli_json("list", "--experiment", exp_id, token=token)}
    assert runs[0.09]["state"] == "COMPLETED" and runs[0.1]["state"] == "COMPLETED"
    for lr in (0.01, 0.005, 0.002):
        assert runs[lr]["state"] == "STOPPED", runs[lr]
        assert runs[lr]["reason"].startswith("stopped by ASHA at step 1")
        assert runs[lr]["metrics"]["step"] < 9
    assert exp["best"]["run_id"] == runs[0.1]["id"]
    assert exp["runs"] == {"COMPLETED": 2, "STOPPED": 3}
    assert exp["gpu_seconds_saved"] > 0


def test_tpe_adds_runs_as_results_arrive_until_the_budget(backend, tmp_path):
    manifest = definition(tmp_path, hyperparameters={"lr": {"uniform": [0.0, 1.0]}, "steps": [2]},
                          search={"algorithm": "tpe", "runs": 7, "metric": "acc", "mode": "max", "seed": 5})
    exp_id = submit(backend, manifest)
    exp = backend.wait_experiment(exp_id, timeout=120)
    runs = backend.cli_json("list", "--experiment", exp_id)
    assert len(runs) == 7 and exp["runs"] == {"COMPLETED": 7}
    created = [r["created"] for r in sorted(runs, key=lambda r: r["id"])]
    assert len(set(created[:3])) == 1, "TPE starts with its 3 random startup points, submitted together"
    ends = sorted(t["time"] for r in runs for t in r["transitions"] if t["state"] == "COMPLETED")
    for later in created[3:]:
        assert later > created[0] and later >= ends[0], "later points are drawn once results arrive"
    assert sorted(r["id"] for r in runs) == [f"{exp_id}-{i:02d}" for i in range(1, 8)]
    assert all(0.0 <= r["hparams"]["lr"] <= 1.0 for r in runs)


def test_no_rung_at_or_beyond_max_steps():
    search = Search(algorithm="random", metric="acc", mode="max",
                    early_stopping=EarlyStopping(type="asha", min_steps=1, reduction_factor=3, max_steps=9))
    assert rung_steps(search, 9) == [1, 3]
    trials = {"a": Trial({"q": 0.9}, "completed", {s: 0.9 for s in range(1, 10)}),
              "b": Trial({"q": 0.1}, "running", {s: 0.1 for s in range(1, 10)})}
    assert early_stop(search, SPACE, trials, "b") is not None  # judged at rung 3, not at step 9
    assert rung_steps(Search(algorithm="random", metric="acc", early_stopping=EarlyStopping(max_steps=1)), 5) == []
