"""``%wml`` and ``%%wml``: parse the line, call ``Client``, return an object that renders itself.

Each subcommand is a small function with its own ``@magic_arguments`` parser; ``%wml?`` shows
all their help; the train flags come from ``wml_core.train_options``, as the CLI's do.
Expected errors are ``WmlError``: one line, no traceback, and the cell fails.
"""

from __future__ import annotations

import difflib
import shlex
import sys
from typing import Any, Callable, Optional

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from wml_core.backend_flags import bounded
from wml_core.errors import InvalidInput
from wml_core.train_options import API, CELL, FILE, options_for

INTRO = """Run deep-learning experiments on the wml training backend from a notebook.

    %wml SUBCOMMAND [ARGS]        %%wml train [FLAGS] (then training code)

Line arguments expand $var and {expr}. Expected errors are one line (WmlError) and fail the cell.
The same is available without magics: `from wml_jupyter import Client`.
"""


class MagicUsageError(InvalidInput):
    """Arguments of a ``%wml`` subcommand that do not parse."""


Handler = Callable[["WmlMagics", Any, Optional[str]], Any]
#: name → handler; a handler's ``parser`` reads its arguments.
SUBCOMMANDS: dict[str, Handler] = {}


def subcommand(name: str) -> Callable[[Handler], Handler]:
    """Register a ``%wml NAME`` handler (already decorated with ``@magic_arguments``)."""
    def register(func: Handler) -> Handler:
        SUBCOMMANDS[name] = func
        return func
    return register


@magics_class
class WmlMagics(Magics):
    """The ``%wml`` line and cell magic."""

    def __init__(self, shell: Any = None):
        super().__init__(shell)
        self._client = None

    @property
    def client(self):
        """The ``Client`` this shell uses (made on first use; ``%wml config`` replaces it)."""
        if self._client is None:
            from .client import Client
            self._client = Client()
        return self._client

    @line_cell_magic
    def wml(self, line: str, cell: Optional[str] = None) -> Any:
        name, _, rest = line.strip().partition(" ")
        if not name or name in ("help", "-h", "--help"):
            print(manual())
            return None
        if name == "train":
            handler = train_cell if cell is not None else train_file
        elif cell is not None:
            raise MagicUsageError(f"%%wml {name}: only `%%wml train` takes a cell")
        elif name in SUBCOMMANDS:
            handler = SUBCOMMANDS[name]
        else:
            close = difflib.get_close_matches(name, [*SUBCOMMANDS, "train"], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise MagicUsageError(f"%wml: unknown subcommand {name!r}; {hint}see %wml?")
        return handler(self, parse(handler, rest), cell)


def parse(handler: Handler, text: str) -> Any:
    """A subcommand's arguments, split as a shell would (quotes removed)."""
    prog = "%" + handler.parser.prog
    try:
        return handler.parser.parse_args(shlex.split(text))
    except ValueError as exc:  # unbalanced quotes
        raise MagicUsageError(f"{prog}: {exc}") from None
    except IPythonUsageError as exc:
        # argparse reads a value that begins with '-' (an old token, a negative number) as an option
        hint = "; a value that begins with '-' is given as --option=VALUE" if "expected one argument" in str(exc) else ""
        raise MagicUsageError(f"{prog}: {exc}{hint}") from None


# -- training ---------------------------------------------------------------------------------

def train_flags(where: str) -> Callable[[Handler], Handler]:
    """Add the flags of the train options taken ``where`` (``wml_core.train_options``), in order."""
    def decorate(func: Handler) -> Handler:
        for option in reversed(options_for(where)):  # as stacked @argument lines: the last applied first
            func = argument(option.flag, **option.argparse_kwargs())(func)
        return func
    return decorate


@magic_arguments("%wml train")
@train_flags(CELL)
def train_cell(magics: WmlMagics, args: Any, cell: str) -> Any:
    """Submit the cell as train.py of a new training definition (one run per hyperparameter draw).

    The cell runs in its own process: it must import what it uses, read its hyperparameters with
    `run.hparams()` and log with `run.log(step=..., NAME=value)` (`from wml_jupyter import run`).
    A name it uses but never defines is reported, with its line, before anything is submitted.
    Returns the Experiment, shown as a live display; `exp = _` in the next cell keeps it.
    """
    options = {o.name: getattr(args, o.name) for o in options_for(CELL) if API in o.takes}
    experiment = magics.client.train_code(cell, notebook=magics.shell.user_ns if magics.shell else None,
                                          first_line=2, **options)  # the cell's line 1 is %%wml
    return _submitted(magics, experiment.watch(args.metric), args.wait)


@magic_arguments("wml train")
@argument("manifest", help="an FfDL or Watson ML manifest.yml, submitted unchanged")
@argument("model", nargs="?", help="model directory or zip (default: the manifest's directory)")
@train_flags(FILE)
def train_file(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Submit an existing training definition (manifest + code) as an experiment, with a live display."""
    experiment = magics.client.train(args.manifest, args.model, sweep=args.sweep, runs=args.runs)
    return _submitted(magics, experiment.watch(), args.wait)


def _submitted(magics: WmlMagics, experiment: Any, wait: bool) -> Any:
    """The experiment to show; with ``wait``, shown live now and returned once it has ended (its
    final view then stands in for the live one, which is cleared)."""
    if not wait:
        return experiment
    from IPython.display import clear_output, display
    display(experiment)
    live = experiment.live()
    while not live.finished.wait(0.5):
        pass
    clear_output(wait=True)
    return experiment.refresh()


# -- queries and actions ----------------------------------------------------------------------

@subcommand("watch")
@magic_arguments("wml watch")
@argument("experiment", help="experiment id")
@argument("--metric", help="metric to draw (default: the experiment's)")
def watch(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Show an experiment's live display again (after a kernel restart, or in another notebook)."""
    return magics.client.watch(args.experiment, args.metric)


@subcommand("list")
@magic_arguments("wml list")
@argument("experiment", nargs="?", help="list this experiment's runs (default: your experiments)")
@argument("--state", help="only runs in this state, e.g. FAILED")
def list_(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Your experiments, newest first; or the runs of one experiment."""
    from .objects import ExperimentList, RunList
    if args.experiment or args.state:
        return RunList(magics.client.runs(args.experiment, args.state))
    return ExperimentList(magics.client.experiments())


@subcommand("show")
@magic_arguments("wml show")
@argument("id", help="a run id (EXP-NN) or an experiment id")
def show(magics: WmlMagics, args: Any, cell: None) -> Any:
    """A run, or an experiment with its runs."""
    from .client import _is_run_id
    return magics.client.run(args.id) if _is_run_id(args.id) else magics.client.experiment(args.id)


@subcommand("logs")
@magic_arguments("wml logs")
@argument("run", help="run id")
@argument("--follow", "-f", action="store_true", help="print the log as it grows, until the run ends")
@argument("--learner", type=bounded(1, 10_000), default=1, help="learner whose log to show (default 1)")
def logs(magics: WmlMagics, args: Any, cell: None) -> Any:
    """A run's training log."""
    from .objects import LogText
    if magics.client.wait_to_start(args.run, print):
        args.follow = True  # it was waiting: its log is followed from its start
    if not args.follow:
        return LogText(magics.client.logs(args.run, learner=args.learner).data)
    for text in magics.client.follow_logs(args.run, learner=args.learner):
        sys.stdout.write(text)
        sys.stdout.flush()
    return None


@subcommand("cancel")
@magic_arguments("wml cancel")
@argument("id", help="a run id, or an experiment id (cancels its live runs)")
def cancel(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Cancel a run or every live run of an experiment."""
    return magics.client.cancel(args.id)


@subcommand("download")
@magic_arguments("wml download")
@argument("run", help="run id")
@argument("dest", nargs="?", default=".", help="local directory (default: the current one)")
def download(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Download a run's results (RESULT_DIR, its log, its code) with a progress bar."""
    from .progress import Transfer, progress
    summary = magics.client.download(args.run, args.dest, progress=progress("download"))
    return Transfer(summary, "received", args.dest)


@subcommand("upload")
@magic_arguments("wml upload")
@argument("path", help="local file or directory")
@argument("bucket", metavar="BUCKET[/PREFIX]", help="where in the object store")
def upload(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Sync a file or directory to object storage with a progress bar; unchanged files are skipped."""
    from .progress import Transfer, progress
    summary = magics.client.upload(args.path, args.bucket, progress=progress("upload"))
    return Transfer(summary, "sent", args.bucket)


@subcommand("compare")
@magic_arguments("wml compare")
@argument("experiment", help="experiment id")
@argument("--metric", help="metric to rank by (default: the experiment's)")
def compare(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Runs sorted by the metric, best configuration first, and a parallel-coordinates plot."""
    return magics.client.compare(args.experiment, args.metric)


@subcommand("usage")
@magic_arguments("wml usage")
def usage(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Your GPU quota, GPUs in use and queued, and GPU time per experiment."""
    from .objects import UsageReport
    return UsageReport(magics.client.usage())


@subcommand("config")
@magic_arguments("wml config")
@argument("--backend", metavar="URL", help="training backend URL ('' for the embedded backend)")
@argument("--token", help="API token for the backend")
@argument("--storage", metavar="S3_URL", help="default object store, s3://bucket/prefix ('' for the file store)")
@argument("--endpoint", metavar="URL", help="S3 endpoint (MinIO, Ceph, IBM COS...)")
@argument("--show", action="store_true", help="show the configuration (the default with no flag)")
def config(magics: WmlMagics, args: Any, cell: None) -> Any:
    """Show or set the client configuration (saved in $WML_HOME/config.yaml; secrets shown masked)."""
    from .config import load_profile, set_value
    for key in ("backend", "token", "storage", "endpoint"):
        value = getattr(args, key)
        if value is not None:
            set_value(key, value or None)
            magics._client = None
    return load_profile().masked()


def manual() -> str:
    """The help of every subcommand, as ``%wml?`` shows it."""
    sections = [train_cell, train_file, *SUBCOMMANDS.values()]
    return INTRO + "\n" + "\n\n".join(f.__doc__.strip() for f in sections)


WmlMagics.wml.__doc__ = manual()


def load(shell: Any) -> None:
    """Register the magics with an IPython shell (``%load_ext wml_jupyter``)."""
    shell.register_magics(WmlMagics)
