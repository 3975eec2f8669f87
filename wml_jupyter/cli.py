"""The ``wml`` command: the Python API from a terminal. Exit 0 ok, 1 failed, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Iterable, Optional

from wml_core.errors import (Conflict, Forbidden, InvalidInput, NotFound, QuotaExceeded,
                             Unauthorized, WmlError)


#: Errors that mean the user's input was wrong (exit 2) rather than the operation failing (1).
INPUT_ERRORS = (InvalidInput, NotFound, QuotaExceeded, Unauthorized, Forbidden, Conflict)
#: Seconds a transfer runs before its progress bars are drawn (one done sooner prints its summary only).
BARS_AFTER_S = 0.5


class UsageError(InvalidInput):
    """Command-line arguments that do not parse."""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so errors print as one line."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


def _client():
    from .client import Client
    return Client()


def _tables():
    """The table renderers, imported on use (commands that print no table never load them)."""
    from . import tables
    return tables


def _emit(args: argparse.Namespace, obj: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(human())


# -- commands -------------------------------------------------------------------------------
def cmd_backend(args: argparse.Namespace) -> int:
    from wml_core.backend_flags import backend_argv

    from . import launcher
    flags = backend_argv(args)
    if args.action == "serve":
        launcher.serve(flags)
    info = launcher.daemon(args.action, flags)
    _emit(args, info, lambda: _tables().backend_status(info))
    return 0 if info["running"] or args.action == "stop" else 1


def cmd_config(args: argparse.Namespace) -> int:
    from .config import load_profile, set_value
    if args.action == "set":
        set_value(args.key, args.value if args.value != "" else None)
    profile = load_profile().masked()
    _emit(args, profile, lambda: "\n".join(f"{k}: {v if v is not None else '(unset)'}" for k, v in profile.items()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from wml_core.manifest import load_manifest_file
    definition = load_manifest_file(args.manifest)
    fmt = {"ffdl": "FfDL (ManifestV1)", "wml": "Watson ML"}[definition.format]
    print(f"{args.manifest}: valid {fmt} manifest: {definition.name}, framework {definition.framework}, "
          f"{definition.gpus} GPU(s) x {definition.learners} learner(s)")
    return 0


def _bars():
    """The progress bars of a transfer, drawn once it has run ``BARS_AFTER_S``."""
    from wml_core.objectstore.progress import tqdm_progress
    return tqdm_progress(delay=BARS_AFTER_S)


def cmd_upload(args: argparse.Namespace) -> int:
    from .config import load_profile
    from .storage import claimed_upload
    profile = load_profile()
    if profile.backend:  # no HTTP client library, no pydantic: a cold command starts sending at once
        summary = claimed_upload(profile, args.path, args.bucket, progress=_bars())
    else:  # the client may start the embedded backend
        summary = _client().upload(args.path, args.bucket, progress=_bars())
    print(summary.line())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wml_core.states import ExperimentState
    if args.dry_run:
        return _dry_run(args)
    client = _client()
    experiment = client.train(args.manifest, args.model, sweep=args.sweep, runs=args.runs)
    if args.wait:
        experiment.wait()
    _emit(args, experiment.model.model_dump(mode="json"), lambda: _tables().experiment(experiment.model, []))
    if not args.json:
        print(experiment.id)
    return 1 if args.wait and experiment.state is not ExperimentState.COMPLETED else 0


def _dry_run(args: argparse.Namespace) -> int:
    """Print the Kubernetes objects of each run of ``wml train ARGS`` as one YAML stream, each run's
    preceded by a comment with its hyperparameters; nothing is submitted and no backend started."""
    from wml_core.manifest import load_manifest_file

    from . import launcher
    from .client import train_request
    from .config import load_profile
    if args.wait or args.json:
        raise UsageError("wml train: --dry-run submits nothing: it takes neither --wait nor --json")
    load_manifest_file(args.manifest)  # a bad manifest is its located lines, as for `wml validate`
    request = train_request(args.manifest, args.model, sweep=args.sweep, runs=args.runs)
    for line in launcher.kubernetes_plan(request.model_dump_json(), load_profile()).splitlines(keepends=True):
        sys.stdout.write(line)  # a line at a time: a reader that stops early is a quiet exit 141
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = _client()
    if args.experiment or args.state:
        runs = [r.model for r in client.runs(args.experiment, args.state, limit=args.limit)]
        _emit(args, [r.model_dump(mode="json") for r in runs], lambda: _tables().runs(runs))
    else:
        exps = [e.model for e in client.experiments(limit=args.limit)]
        _emit(args, [e.model_dump(mode="json") for e in exps], lambda: _tables().experiments(exps))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .client import _is_run_id
    client = _client()
    if _is_run_id(args.id):
        run = client.run(args.id).model
        _emit(args, run.model_dump(mode="json"), lambda: _tables().run_detail(run))
    else:
        exp = client.experiment(args.id)
        runs = [r.model for r in exp.runs()]
        _emit(args, exp.model.model_dump(mode="json"), lambda: _tables().experiment(exp.model, runs))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client()
    if client.wait_to_start(args.run, lambda line: print(line, file=sys.stderr, flush=True)):
        args.follow = True  # it was waiting: its log is followed from its start
    if args.follow:
        for text in client.follow_logs(args.run, learner=args.learner):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(args.run, learner=args.learner).data)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    points = _client().metrics(args.run)
    _emit(args, [p.model_dump() for p in points], lambda: _tables().metrics(points))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    result = _client().cancel(args.id)
    print(f"cancelled {args.id}: {result.state.value if hasattr(result.state, 'value') else result.state}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    part = "logs" if args.logs_only else "model" if args.model else "all"
    summary = _client().download(args.run, args.dest, progress=_bars(), part=part)
    print(summary.line("received"))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    usage = _client().usage()
    _emit(args, usage.model_dump(mode="json"), lambda: _tables().usage(usage))
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    client = _client()
    limits = {flag: getattr(args, flag, None) for flag in ("gpus", "slots", "cpus", "memory", "max_queued")}
    if args.action == "create":
        created = client.create_account(args.name, **limits)
        print(f"account {created.name} created with a quota of {created.gpu_quota} GPU(s); its token:")
        print(created.token)
    elif args.action == "update":
        print(_tables().account(client.update_account(args.name, **limits)))
    elif args.action == "disable":
        client.disable_account(args.name)
        print(f"account {args.name} disabled: its tokens no longer work and its queued runs are halted")
    else:
        rotated = client.rotate_token(args.name)
        print(f"account {rotated.name} has a new token (the old one no longer works):")
        print(rotated.token)
    return 0


#: What ``wml accounts`` does, by action.
ACCOUNT_ACTIONS = {
    "create": "create an account; prints its token on the last line",
    "update": "change an account's GPU quota and limits (a limit not given stays); prints them",
    "disable": "disable an account: its tokens stop working at once, its queued runs are halted",
    "rotate-token": "give an account a new token, printed on the last line; the old one stops working",
}


# -- parser ---------------------------------------------------------------------------------
def _backend_args(sp: Parser) -> None:
    from wml_core.backend_flags import add_backend_flags
    sp.add_argument("action", choices=["start", "stop", "status", "serve"])
    add_backend_flags(sp)


def _config_args(sp: Parser) -> None:
    sp.add_argument("action", nargs="?", choices=["show", "set"], default="show")
    sp.add_argument("key", nargs="?")
    sp.add_argument("value", nargs="?")


def _train_args(sp: Parser) -> None:
    from wml_core.train_options import FILE, add_flags
    sp.add_argument("manifest")
    sp.add_argument("model", nargs="?", help="model directory or zip (default: the manifest's directory)")
    add_flags(sp, FILE)
    sp.add_argument("--dry-run", choices=["kubernetes"],
                    help="print, as YAML, the objects each run would create (secrets redacted); submit nothing")


def _list_args(sp: Parser) -> None:
    from wml_core.backend_flags import bounded
    sp.add_argument("--experiment")
    sp.add_argument("--state")
    sp.add_argument("--limit", type=bounded(1, 10**9),
                    help="list at most this many (default: all, read a page at a time)")


def _logs_args(sp: Parser) -> None:
    from wml_core.backend_flags import bounded
    sp.add_argument("run")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    sp.add_argument("--learner", type=bounded(1, 10_000), default=1)


def _download_args(sp: Parser) -> None:
    sp.add_argument("run")
    sp.add_argument("dest", nargs="?", default=".")
    only = sp.add_mutually_exclusive_group()
    only.add_argument("--logs-only", action="store_true", help="only the training logs (learner-*/)")
    only.add_argument("--model", action="store_true", help="only the submitted model code (_submitted_code/)")


def _accounts_args(sp: Parser) -> None:
    from wml_core.backend_flags import add_limit_flags, bounded
    actions = sp.add_subparsers(dest="action", required=True, parser_class=Parser)
    for action, help_text in ACCOUNT_ACTIONS.items():
        ap = actions.add_parser(action, help=help_text, description=help_text)
        ap.add_argument("name")
        if action in ("create", "update"):
            ap.add_argument("--gpus", type=bounded(0, 10_000), required=action == "create",
                            help="the account's GPU quota: GPUs its runs may hold at once")
            add_limit_flags(ap)


def _positional(*names: str) -> Callable[[Parser], None]:
    """Adds the positional arguments ``names`` to a command's parser."""
    def add(sp: Parser) -> None:
        for name in names:
            sp.add_argument(name)
    return add


#: The commands, in ``wml --help``'s order: (function, help, whether it takes --json, its arguments).
COMMANDS: dict[str, tuple[Callable, str, bool, Callable[[Parser], None]]] = {
    "backend": (cmd_backend, "start, stop or query the embedded backend", True, _backend_args),
    "config": (cmd_config, "show or set the client configuration", True, _config_args),
    "validate": (cmd_validate, "check a manifest (FfDL or Watson ML format)", False, _positional("manifest")),
    "upload": (cmd_upload, "sync a local file or directory to BUCKET[/PREFIX]", False,
               _positional("path", "bucket")),
    "train": (cmd_train, "submit a training definition as an experiment", True, _train_args),
    "list": (cmd_list, "list experiments, or runs with --experiment/--state", True, _list_args),
    "show": (cmd_show, "show a run or an experiment", True, _positional("id")),
    "logs": (cmd_logs, "print a run's training log", False, _logs_args),
    "metrics": (cmd_metrics, "print a run's metrics", True, _positional("run")),
    "cancel": (cmd_cancel, "cancel a run or a whole experiment", False, _positional("id")),
    "download": (cmd_download, "download a run's results", False, _download_args),
    "usage": (cmd_usage, "GPU quota and GPU time", True, _positional()),
    "accounts": (cmd_accounts, "create, change or disable an account, or give it a new token "
                 "(administrators only)", False, _accounts_args),
}


def build_parser(commands: Optional[Iterable[str]] = None) -> Parser:
    """The ``wml`` argument parser; with ``commands``, only those commands get their arguments
    (every command is still listed with its help: the others' arguments cost imports)."""
    wanted = COMMANDS if commands is None else set(commands)
    p = Parser(prog="wml", description="Run deep-learning experiments on the wml training backend.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (func, help, json_flag, add_args) in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if name in wanted:
            add_args(sp)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``wml`` with ``argv``; print one line per error, never a traceback for expected ones."""
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser(argv).parse_args(argv)  # only the command asked for: less to import
        return args.func(args)
    except WmlError as exc:
        located = isinstance(exc, UsageError) or hasattr(exc, "problems")  # already says where
        print(str(exc) if located else f"wml: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, INPUT_ERRORS) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `wml ... | head` stopped reading: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush cannot fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
