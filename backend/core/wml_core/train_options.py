"""What a training submission asks for, defined once: each option's default, help and manifest field.

``%%wml train``'s flags, the flags of ``wml train MANIFEST`` and ``%wml train FILE``,
``Client.train_code``'s options (``TrainOptions``), the manifest a cell's options describe, and
the defaults of the sidebar's "Train this cell" dialog all come from ``OPTIONS``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from wml_core.errors import InvalidInput

if TYPE_CHECKING:
    from wml_core.definition import ParamSpec

#: Where an option is taken: a flag of ``%%wml train`` (a cell), a flag of ``wml train MANIFEST``
#: and ``%wml train FILE`` (a manifest submitted unchanged), an option of ``Client.train_code``.
CELL, FILE, API = "cell", "file", "api"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class TrainOption:
    """One option: how it is given, its default and help, and the manifest field it sets."""

    #: Its Python name; the flag is the same with dashes (``early_stop``: ``--early-stop``).
    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    metavar: Optional[str] = None
    #: A flag given once per value: its value is a list (``default`` is then a tuple).
    repeat: bool = False
    #: A flag without a value: True when given (``default`` is then False).
    switch: bool = False
    #: The manifest field (dotted) a cell's value is written to, through ``to_manifest``.
    field: Optional[str] = None
    to_manifest: Callable[[Any], Any] = _same
    #: Written even when left at its default (the manifest needs it, or says it plainly).
    always: bool = False
    #: Written only when this other option is given too (a setting of that one).
    only_with: Optional[str] = None
    #: Given without this other option, it is an input error.
    requires: Optional[str] = None
    #: Where it is taken (``CELL``, ``FILE``, ``API``).
    takes: frozenset[str] = frozenset({CELL, API})

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--max-retries``."""
        return "--" + self.name.replace("_", "-")

    def fresh_default(self) -> Any:
        """The default value (a new list for a repeated flag)."""
        return list(self.default or ()) if self.repeat else self.default

    def argparse_kwargs(self) -> dict[str, Any]:
        """What ``add_argument(self.flag, **...)`` needs (argparse or IPython's ``@argument``)."""
        if self.switch:
            return {"action": "store_true", "help": self.help}
        kwargs = {"type": self.type, "default": self.fresh_default(), "choices": self.choices or None,
                  "metavar": self.metavar, "help": self.help, "action": "append" if self.repeat else None}
        return {key: value for key, value in kwargs.items() if value is not None}

    def given(self, value: Any) -> bool:
        """Whether ``value`` says something: not empty and not the default."""
        return value not in (None, "", [], ()) and value != self.default


def _framework(spec: Optional[str]) -> dict[str, str]:
    """``NAME[:VERSION]`` as the manifest's ``framework`` fields."""
    return dict(zip(("name", "version"), (spec or "").split(":", 1)))


def _data_stores(bucket: str) -> list[dict]:
    """A data bucket of the configured default store as the manifest's ``data_stores``."""
    return [{"id": "data", "training_data": {"container": bucket}}]


def _param_yaml(spec: ParamSpec) -> Any:
    """A hyperparameter spec in the manifest's form."""
    if spec.kind == "choice":
        return spec.values[0] if len(spec.values) == 1 else list(spec.values)
    bounds = [spec.low, spec.high] + ([spec.step] if spec.step is not None else [])
    return {spec.kind: [int(b) if spec.kind == "int" else b for b in bounds]}


def _hyperparameters(flags: Iterable[str]) -> dict[str, Any]:
    """``--sweep`` flags as the manifest's ``hyperparameters``."""
    from wml_core.search_space import parse_sweep_flag  # pydantic: only when a cell is submitted
    return {name: _param_yaml(spec) for name, spec in map(parse_sweep_flag, flags)}


_BOTH, _ON_LINE, _API_ONLY = frozenset({CELL, FILE, API}), frozenset({CELL, FILE}), frozenset({API})

#: Every option, in the order flags are listed.
OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("name", "the definition's name (letters, digits, spaces, . _ -)", "notebook",
                field="name", always=True),
    TrainOption("framework", "framework, e.g. pytorch or pytorch:2.4", "pytorch", metavar="NAME[:VERSION]",
                field="framework", to_manifest=_framework, always=True),
    TrainOption("framework_version", "framework version (the image tag), when not in framework", None,
                field="framework.version", takes=_API_ONLY),
    TrainOption("gpus", "GPUs per learner (default 0)", 0, int, field="gpus", always=True),
    TrainOption("cpus", "CPUs per learner (default 1)", None, float, field="cpus"),
    TrainOption("memory", "memory per learner, e.g. 4Gi, 512Mi or 2GB", None, field="memory"),
    TrainOption("learners", "cooperating learner processes per run (default 1)", 1, int,
                field="learners", always=True),
    TrainOption("data", "bucket[/prefix] (see %%wml upload) unpacked as the run's DATA_DIR", None,
                metavar="BUCKET", field="data_stores", to_manifest=_data_stores),
    TrainOption("sweep", "a hyperparameter to search, repeatable: 'lr=loguniform(1e-4,1e-1)', "
                "'hidden=[32,64]', 'p=uniform(0,0.5)', 'layers=int(1,4)', 'seed=3'", (), metavar="SPEC",
                repeat=True, field="hyperparameters", to_manifest=_hyperparameters, takes=_BOTH),
    TrainOption("runs", "number of runs (default: the manifest's search.runs, else 10, or the whole grid if "
                "smaller)", None, int, field="search.runs", takes=_BOTH),
    TrainOption("search", "search algorithm (default random)", None, choices=("random", "grid", "tpe"),
                field="search.algorithm"),
    TrainOption("metric", "metric the search compares runs by, as logged with run.log(NAME=...)", None,
                field="search.metric"),
    TrainOption("mode", "whether a larger or smaller metric is better", "max", choices=("max", "min"),
                field="search.mode", only_with="metric"),
    TrainOption("early_stop", "stop runs that fall behind (needs --metric)", None, choices=("asha", "median"),
                field="search.early_stopping.type", requires="metric"),
    TrainOption("min_steps", "early stopping: first step runs are compared at (default 1)", None, int,
                field="search.early_stopping.min_steps", only_with="early_stop"),
    TrainOption("reduction_factor", "ASHA: keep the best 1/N at each rung (default 3)", None, int,
                field="search.early_stopping.reduction_factor", only_with="early_stop"),
    TrainOption("max_steps", "early stopping: the step runs train to; never stopped there", None, int,
                field="search.early_stopping.max_steps", only_with="early_stop"),
    TrainOption("seed", "seed of the search, for repeatable draws", None, int, field="search.seed"),
    TrainOption("include", "a file or directory shipped beside train.py, repeatable", (), metavar="PATH",
                repeat=True),
    TrainOption("max_retries", "start a run again, up to N times, when its process fails (default 0)", 0, int,
                metavar="N", field="max_retries"),
    TrainOption("timeout", "a run that takes longer ends FAILED, e.g. 90m, 2h or 1h30m (default: no limit)",
                None, metavar="DURATION", field="timeout"),
    TrainOption("wait", "block until every run has ended (the command line then exits 1 if one did not "
                "complete)", False, switch=True, takes=_ON_LINE),
)
BY_NAME: dict[str, TrainOption] = {option.name: option for option in OPTIONS}


def options_for(where: str) -> tuple[TrainOption, ...]:
    """The options taken ``where`` (``CELL``, ``FILE`` or ``API``), in order."""
    return tuple(option for option in OPTIONS if where in option.takes)


def default_of(name: str) -> Any:
    """The default value of option ``name``."""
    return BY_NAME[name].fresh_default()


def add_flags(parser: argparse.ArgumentParser, where: str) -> None:
    """Add the flags of the options taken ``where`` to an argparse parser."""
    for option in options_for(where):
        parser.add_argument(option.flag, **option.argparse_kwargs())


def _annotation(option: TrainOption) -> Any:
    return list[str] if option.repeat else Optional[option.type]


#: ``Client.train_code``'s options as one object: a field per ``API`` option, with its default.
TrainOptions = make_dataclass(
    "TrainOptions", [(o.name, _annotation(o), field(default_factory=o.fresh_default)) for o in options_for(API)],
    namespace={"__doc__": "What ``%%wml train`` (or ``Client.train_code``) is told besides the code.",
               "__module__": __name__})


def train_options(values: Mapping[str, Any]) -> Any:
    """``values`` as ``TrainOptions``; an unknown name is an input error listing the valid ones."""
    valid = [option.name for option in options_for(API)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise InvalidInput(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return TrainOptions(**values)


def _check(options: Any) -> None:
    """An input error for an option given without the option it requires."""
    for option in options_for(API):
        needed = BY_NAME.get(option.requires or "")
        if needed and option.given(getattr(options, option.name)) and not needed.given(
                getattr(options, needed.name)):
            raise InvalidInput(f"{option.flag} needs {needed.flag} ({needed.help})")


def _written(option: TrainOption, options: Any) -> bool:
    """Whether the option's value goes into the manifest."""
    if not option.field:
        return False
    partner = BY_NAME.get(option.only_with or "")
    if partner and not partner.given(getattr(options, partner.name)):
        return False
    return option.always or option.given(getattr(options, option.name))


def _put(data: dict, path: str, value: Any) -> None:
    """Set ``data[a][b]...`` for the dotted ``path``, merging into a mapping already there."""
    *parents, last = path.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    if isinstance(value, dict) and isinstance(data.get(last), dict):
        data[last].update(value)
    else:
        data[last] = value


def manifest_fields(options: Any) -> dict[str, Any]:
    """The manifest fields ``options`` (a ``TrainOptions``) describe; an input error for a bad combination."""
    _check(options)
    data: dict[str, Any] = {}
    for option in options_for(API):
        if _written(option, options):
            _put(data, option.field, option.to_manifest(getattr(options, option.name)))
    return data
