"""The extension sections, the same in both formats: hyperparameters, search, max_retries, timeout.

The hyperparameter space is parsed by space.py; here its problems are placed at their lines,
and the search is checked against the space (a grid must be finite and fit the runs).
"""

from __future__ import annotations

from wml_core import search_space as space
from wml_core.definition import EarlyStopping, Search
from wml_core.manifest.reader import Reader

#: Top-level fields accepted in both formats, beside each format's own.
EXTENSIONS = ("hyperparameters", "search", "max_retries", "timeout")
#: Fields inside the search section and its early_stopping.
SEARCH_FIELDS = ("algorithm", "runs", "metric", "mode", "seed", "early_stopping")
EARLY_STOPPING_FIELDS = ("type", "min_steps", "reduction_factor", "max_steps")


def read_extensions(r: Reader) -> dict:
    """hyperparameters, search, max_retries and timeout (the same in both formats)."""
    params = _hyperparameters(r)
    return dict(hyperparameters=params, search=_search(r, params),
                max_retries=r.whole(("max_retries",), 0, 0, 100), timeout_s=r.duration(("timeout",)))


def _hyperparameters(r: Reader) -> dict:
    """The hyperparameter space (space.py); empty if absent or wrong."""
    raw = r.get(("hyperparameters",))
    if raw is None:
        return {}
    try:
        return space.parse_space(raw)
    except space.SpaceError as err:
        for path, message in err.errors:
            r.problem(("hyperparameters",) + path, message)
        return {}


def _search(r: Reader, params: dict) -> Search:
    """The search section, checked against the space ``params``; absent: the default search."""
    path = ("search",)
    if r.section(path, SEARCH_FIELDS) is None:
        return Search()
    search = Search(algorithm=r.choice(path + ("algorithm",), ("grid", "random", "tpe"), "random"),
                    runs=r.whole(path + ("runs",), None, 1, space.MAX_RUNS),
                    metric=r.text(path + ("metric",)),
                    mode=r.choice(path + ("mode",), ("max", "min"), "max"),
                    seed=r.whole(path + ("seed",), None, 0, 2**32 - 1),
                    early_stopping=_early_stopping(r, path + ("early_stopping",)))
    _check_search(r, search, params)
    return search


def _early_stopping(r: Reader, path: tuple) -> EarlyStopping | None:
    """The search's early_stopping section; None if absent."""
    if r.section(path, EARLY_STOPPING_FIELDS) is None:
        return None
    return EarlyStopping(type=r.choice(path + ("type",), ("asha", "median"), "asha"),
                         min_steps=r.whole(path + ("min_steps",), 1, 1, 10**9),
                         reduction_factor=r.whole(path + ("reduction_factor",), 3, 2, 100),
                         max_steps=r.whole(path + ("max_steps",), None, 1, 10**9))


def _check_search(r: Reader, search: Search, params: dict) -> None:
    """What only the search and the space together can tell: a grid must be finite and fit."""
    if search.metric is None and (search.algorithm == "tpe" or search.early_stopping):
        why = "tpe search" if search.algorithm == "tpe" else "early_stopping"
        r.problem(("search", "metric"), f"{why} needs the metric to optimise (metric: NAME)")
    if search.algorithm != "grid":
        return
    infinite = [name for name, spec in params.items() if not space.is_finite({name: spec})]
    for name in infinite:
        r.problem(("hyperparameters", name), f"grid search needs finite choices: "
                  f"{space.describe(params[name])} has none; use a list, int or quniform")
    if infinite:
        return
    size = space.grid_size(params)
    if size > space.MAX_RUNS:
        r.problem(("search", "algorithm"), f"the grid has {size} points; the limit is "
                  f"{space.MAX_RUNS} runs")
    elif search.runs is not None and search.runs < size:
        r.problem(("search", "runs"), f"the grid has {size} points but runs is {search.runs}: "
                  f"raise runs (or drop it) or shrink the grid")
