"""Hyperparameter spaces: reading specs and flags, grids, and seeded sampling."""

from __future__ import annotations

import json
import math
import time

import pytest
from wml_core.definition import ParamSpec, Search
from wml_core.errors import InvalidInput
from wml_backend.search.decisions import distributions, random_points, sample, startup_runs
from wml_core.search_space import (
    DEFAULT_RUNS,
    MAX_RUNS,
    SpaceError,
    grid,
    grid_size,
    is_finite,
    parse_param,
    parse_space,
    parse_sweep_flag,
)

LR = ParamSpec(kind="loguniform", low=1e-4, high=1e-1)
SPACE = {
    "lr": LR,
    "batch": ParamSpec(kind="choice", values=[32, 64, 128]),
    "opt": ParamSpec(kind="choice", values=["adam", "sgd"]),
    "dropout": ParamSpec(kind="uniform", low=0.0, high=0.5),
    "layers": ParamSpec(kind="int", low=1, high=4),
    "x": ParamSpec(kind="quniform", low=0, high=1, step=0.25),
}
FINITE = {name: spec for name, spec in SPACE.items() if name not in ("lr", "dropout")}


# ---- flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, name, spec", [
    ("lr=loguniform(1e-4,1e-1)", "lr", LR),
    ("lr = loguniform(1e-4, 1e-1)", "lr", LR),
    ("hidden=[32,64,128]", "hidden", ParamSpec(kind="choice", values=[32, 64, 128])),
    ("opt=choice(adam,sgd)", "opt", ParamSpec(kind="choice", values=["adam", "sgd"])),
    ("opt=choice('a b', \"c\")", "opt", ParamSpec(kind="choice", values=["a b", "c"])),
    ("dropout=uniform(0,0.5)", "dropout", ParamSpec(kind="uniform", low=0, high=0.5)),
    ("layers=int(1,4)", "layers", ParamSpec(kind="int", low=1, high=4)),
    ("layers=randint(0,100,10)", "layers", ParamSpec(kind="int", low=0, high=100, step=10)),
    ("x=quniform(0,1,0.25)", "x", ParamSpec(kind="quniform", low=0, high=1, step=0.25)),
    ("seed=3", "seed", ParamSpec(kind="choice", values=[3])),
    ("act=relu", "act", ParamSpec(kind="choice", values=["relu"])),
    ("bn=[true,false]", "bn", ParamSpec(kind="choice", values=[True, False])),
])
def test_sweep_flag_forms(flag, name, spec):
    assert parse_sweep_flag(flag) == (name, spec)


@pytest.mark.parametrize("flag", [
    "lr", "lr=", "=3", "lr=uniform(0,1", "lr=loguniform(0,1)", "lr=foo(1,2)",
    "lr=uniform(1,0)", "x=[]", "x=choice()", "x=[[1],[2]]", "a-b=3", "1x=3",
    "x=int(1.5,3)", "x=uniform(a,b)", "x=quniform(0,1)", "x=quniform(0,1,0)",
    "x=uniform(0,nan)", "x=uniform(0,inf)", "x=uniform(0,1,2)", "x=[nan]",
])
def test_bad_sweep_flags_name_the_flag_on_one_line(flag):
    with pytest.raises(InvalidInput) as info:
        parse_sweep_flag(flag)
    message = str(info.value)
    assert message.startswith(f"--sweep {flag!r}: ") and "\n" not in message


# ---- manifest specs -----------------------------------------------------------------------

def test_manifest_forms_match_flag_forms():
    raw = {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "batch": [32, 64, 128],
           "opt": {"choice": ["adam", "sgd"]}, "dropout": {"uniform": [0.0, 0.5]},
           "layers": {"int": [1, 4]}, "x": {"quniform": [0, 1, 0.25]}}
    assert parse_space(raw) == SPACE


def test_a_scalar_is_a_fixed_value():
    assert parse_param("seed", 3) == ParamSpec(kind="choice", values=[3])
    assert parse_param("name", "resnet") == ParamSpec(kind="choice", values=["resnet"])


def test_parse_space_reports_every_bad_parameter():
    with pytest.raises(SpaceError) as info:
        parse_space({"a": {"loguniform": [0, 1]}, "ok": [1], "b": [], "c": {"normal": [0, 1]},
                     "d": {"uniform": "0,1"}, "e": [{"x": 1}]})
    assert [path for path, _ in info.value.errors] == [
        ("a", "loguniform"), ("b",), ("c", "normal"), ("d", "uniform"), ("e",)]
    assert str(info.value).splitlines()[0].startswith("hyperparameters.a.loguniform: ")


def test_parse_space_needs_a_mapping():
    with pytest.raises(SpaceError, match="must be a mapping"):
        parse_space(["lr"])


# ---- grids --------------------------------------------------------------------------------

def test_is_finite():
    assert is_finite(FINITE) and is_finite({})
    assert not is_finite(SPACE) and not is_finite({"lr": LR})


def test_grid_is_the_full_product_first_parameter_slowest():
    points = grid(FINITE)
    assert len(points) == grid_size(FINITE) == 3 * 2 * 4 * 5
    assert points[0] == {"batch": 32, "opt": "adam", "layers": 1, "x": 0.0}
    assert points[1] == {"batch": 32, "opt": "adam", "layers": 1, "x": 0.25}
    assert points[-1] == {"batch": 128, "opt": "sgd", "layers": 4, "x": 1.0}
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    assert grid(FINITE) == points


def test_grid_values_of_steps():
    assert [p["n"] for p in grid({"n": ParamSpec(kind="int", low=0, high=100, step=25)})] == [
        0, 25, 50, 75, 100]
    assert [p["q"] for p in grid({"q": ParamSpec(kind="quniform", low=0, high=1, step=0.3)})] == [
        0.0, 0.3, 0.6, 0.9]
    assert grid({}) == [{}]


def test_grid_of_a_continuous_range_is_an_error():
    with pytest.raises(InvalidInput, match=r"grid search needs finite choices: lr is "
                                           r"loguniform\(0.0001, 0.1\)"):
        grid(SPACE)


def test_grid_too_large_is_an_error_without_building_it():
    huge = {"a": ParamSpec(kind="int", low=0, high=10**9), "b": ParamSpec(kind="int", low=0,
                                                                          high=10**9)}
    start = time.perf_counter()
    with pytest.raises(InvalidInput, match=f"at most {MAX_RUNS} runs"):
        grid(huge)
    assert time.perf_counter() - start < 0.1


def test_grid_search_with_fewer_runs_than_points_is_an_error():
    assert len(sample(FINITE, Search(algorithm="grid"), 120)) == 120
    assert len(sample(FINITE, Search(algorithm="grid", runs=500))) == 120
    assert len(sample(FINITE, Search(algorithm="grid"))) == 120
    with pytest.raises(InvalidInput, match="the grid has 120 points but runs is 10"):
        sample(FINITE, Search(algorithm="grid"), 10)


# ---- random sampling ----------------------------------------------------------------------

def test_same_seed_same_points_other_seed_other_points():
    first = sample(SPACE, Search(seed=7), 20)
    assert first == sample(SPACE, Search(seed=7), 20)
    assert first != sample(SPACE, Search(seed=8), 20)
    assert sample(SPACE, Search(seed=7), 5) == first[:5]


def test_no_seed_is_fresh_randomness():
    assert sample({"lr": LR}, Search(), 5) != sample({"lr": LR}, Search(), 5)


def test_values_are_plain_json_within_bounds():
    for point in sample(SPACE, Search(seed=1), 200):
        assert list(point) == list(SPACE)
        assert 1e-4 <= point["lr"] <= 1e-1 and type(point["lr"]) is float
        assert point["batch"] in (32, 64, 128) and type(point["batch"]) is int
        assert point["opt"] in ("adam", "sgd")
        assert 0.0 <= point["dropout"] <= 0.5 and type(point["dropout"]) is float
        assert point["layers"] in (1, 2, 3, 4) and type(point["layers"]) is int
        assert point["x"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert json.loads(json.dumps(point)) == point


def test_every_choice_and_int_value_is_drawn():
    points = sample(FINITE, Search(seed=2), 300)
    assert {p["batch"] for p in points} == {32, 64, 128}
    assert {p["layers"] for p in points} == {1, 2, 3, 4}
    assert {p["x"] for p in points} == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_loguniform_spreads_evenly_over_decades():
    values = [p["lr"] for p in random_points({"lr": LR}, 3000, seed=3)]
    decades = [sum(1 for v in values if lo <= v < lo * 10) / len(values)
               for lo in (1e-4, 1e-3, 1e-2)]
    assert all(0.28 < share < 0.39 for share in decades), decades  # uniform would be ~1%/9%/90%


def test_random_draws_equal_an_optuna_study_with_the_same_seed():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    asked = [study.ask(distributions(SPACE)).params for _ in range(10)]
    drawn = random_points(SPACE, 10, seed=11)
    for ask, draw in zip(asked, drawn, strict=True):
        assert draw.keys() == ask.keys()
        for name in draw:
            expected = ask[name]
            assert draw[name] == (pytest.approx(expected) if type(expected) is float else expected)


def test_default_runs_and_runs_from_search():
    assert len(sample(SPACE, Search(seed=1))) == DEFAULT_RUNS
    assert len(sample(SPACE, Search(seed=1, runs=4))) == 4
    assert len(sample(SPACE, Search(seed=1, runs=4), 6)) == 6


@pytest.mark.parametrize("n", [0, -1, MAX_RUNS + 1])
def test_runs_out_of_range(n):
    with pytest.raises(InvalidInput, match="runs must be between"):
        sample(SPACE, Search(), n)


def test_empty_space_repeats_the_same_run():
    assert sample({}, Search(seed=1), 3) == [{}, {}, {}]


def test_sampling_100_points_is_fast():
    sample(SPACE, Search(seed=0), 1)  # the first call imports optuna
    start = time.perf_counter()
    sample(SPACE, Search(seed=0), 100)
    assert time.perf_counter() - start < 0.1


# ---- TPE ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, startup", [(1, 1), (2, 2), (5, 2), (8, 4), (20, 10), (100, 10)])
def test_tpe_startup_runs(n, startup):
    assert startup_runs(n) == startup


def test_tpe_creates_only_its_random_startup_points():
    tpe = sample(SPACE, Search(algorithm="tpe", metric="acc", seed=5), 30)
    assert tpe == sample(SPACE, Search(seed=5), 30)[:startup_runs(30)]


def test_distributions_for_optuna():
    dists = distributions(SPACE)
    assert dists["lr"].log and (dists["lr"].low, dists["lr"].high) == (1e-4, 1e-1)
    assert dists["batch"].choices == (32, 64, 128)
    assert (dists["layers"].low, dists["layers"].high, dists["layers"].step) == (1, 4, 1)
    q = distributions({"q": ParamSpec(kind="quniform", low=0, high=1, step=0.3)})["q"]
    assert (q.low, q.high, q.step) == (0, 0.9, 0.3)
    assert math.isclose(dists["x"].high, 1.0)
