"""The ``wml`` command: the Python API from a terminal. Exit 0 ok, 1 failed, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional

from wml_backend.errors import (Conflict, Forbidden, InvalidInput, NotFound, QuotaExceeded,
                                Unauthorized, WmlError)

from . import tables

#: Errors that mean the user's input was wrong (exit 2) rather than the operation failing (1).
INPUT_ERRORS = (InvalidInput, NotFound, QuotaExceeded, Unauthorized, Forbidden, Conflict)


class UsageError(InvalidInput):
    """Command-line arguments that do not parse."""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so errors print as one line."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (argparse names the flag when it is not)."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    parse.__name__ = "whole number"  # argparse's message reads "invalid whole number value"
    return parse


def _client():
    from .client import Client
    return Client()


def _emit(args: argparse.Namespace, obj: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(human())


# -- commands -------------------------------------------------------------------------------
def cmd_backend(args: argparse.Namespace) -> int:
    from wml_backend import daemon
    settings = daemon.settings_from(args)
    if args.action == "serve":
        daemon.serve(settings)
        return 0
    if args.action == "start":
        info = daemon.start(settings)
    elif args.action == "stop":
        stopped = daemon.stop()
        info = {**daemon.status(), "stopped": stopped}
    else:
        info = daemon.status()
    _emit(args, info, lambda: tables.backend_status(info))
    return 0 if info["running"] or args.action == "stop" else 1


def cmd_config(args: argparse.Namespace) -> int:
    from .config import load_profile, set_value
    if args.action == "set":
        set_value(args.key, args.value if args.value != "" else None)
    profile = load_profile().masked()
    _emit(args, profile, lambda: "\n".join(f"{k}: {v if v is not None else '(unset)'}" for k, v in profile.items()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from wml_backend.manifest import load_manifest_file
    definition = load_manifest_file(args.manifest)
    fmt = {"ffdl": "FfDL (ManifestV1)", "wml": "Watson ML"}[definition.format]
    print(f"{args.manifest}: valid {fmt} manifest: {definition.name}, framework {definition.framework}, "
          f"{definition.gpus} GPU(s) x {definition.learners} learner(s)")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from wml_backend.storage.sync import tqdm_progress
    summary = _client().upload(args.path, args.bucket, progress=tqdm_progress())
    print(summary.line())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    client = _client()
    experiment = client.train(args.manifest, args.model, sweep=args.sweep, runs=args.runs)
    if args.wait:
        experiment.wait()
    _emit(args, experiment.model.model_dump(mode="json"), lambda: tables.experiment(experiment.model, []))
    if not args.json:
        print(experiment.id)
    return 1 if args.wait and experiment.state != "COMPLETED" else 0


def _dry_run(args: argparse.Namespace) -> int:
    """Print the Kubernetes objects of each run of ``wml train ARGS`` as one YAML stream, each run's
    preceded by a comment with its hyperparameters; nothing is submitted and no backend started."""
    import yaml
    from wml_backend.dry_run import kubernetes_plan

    from .client import embedded_settings, train_request
    from .config import load_profile
    if args.wait or args.json:
        raise UsageError("wml train: --dry-run submits nothing: it takes neither --wait nor --json")
    request = train_request(args.manifest, args.model, sweep=args.sweep, runs=args.runs)
    for run in kubernetes_plan(request, embedded_settings(load_profile())):
        print(f"# run {run.run_id}: hyperparameters {json.dumps(run.hparams, sort_keys=True, default=str)}")
        sys.stdout.write(yaml.safe_dump_all(run.objects, explicit_start=True, sort_keys=False))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = _client()
    if args.experiment or args.state:
        runs = [r.model for r in client.runs(args.experiment, args.state)]
        _emit(args, [r.model_dump(mode="json") for r in runs], lambda: tables.runs(runs))
    else:
        exps = [e.model for e in client.experiments()]
        _emit(args, [e.model_dump(mode="json") for e in exps], lambda: tables.experiments(exps))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .client import _is_run_id
    client = _client()
    if _is_run_id(args.id):
        run = client.run(args.id).model
        _emit(args, run.model_dump(mode="json"), lambda: tables.run_detail(run))
    else:
        exp = client.experiment(args.id)
        runs = [r.model for r in exp.runs()]
        _emit(args, exp.model.model_dump(mode="json"), lambda: tables.experiment(exp.model, runs))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client()
    if args.follow:
        for text in client.follow_logs(args.run, learner=args.learner):
            sys.stdout.write(text)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(args.run, learner=args.learner).data)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    points = _client().metrics(args.run)
    _emit(args, [p.model_dump() for p in points], lambda: tables.metrics(points))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    result = _client().cancel(args.id)
    print(f"cancelled {args.id}: {result.state.value if hasattr(result.state, 'value') else result.state}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from wml_backend.storage.sync import tqdm_progress
    part = "logs" if args.logs_only else "model" if args.model else "all"
    summary = _client().download(args.run, args.dest, progress=tqdm_progress(), part=part)
    print(summary.line("received"))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    usage = _client().usage()
    _emit(args, usage.model_dump(mode="json"), lambda: tables.usage(usage))
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    created = _client().create_account(args.name, args.gpus)
    print(f"account {created.name} created with a quota of {created.gpu_quota} GPU(s); its token:")
    print(created.token)
    return 0


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> Parser:
    """The ``wml`` argument parser."""
    p = Parser(prog="wml", description="Run deep-learning experiments on the wml training backend.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, func: Callable, help: str, json_flag: bool = False) -> Parser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    sp = command("backend", cmd_backend, "start, stop or query the embedded backend", json_flag=True)
    sp.add_argument("action", choices=["start", "stop", "status", "serve"])
    sp.add_argument("--executor", choices=["local", "kubernetes"])
    sp.add_argument("--gpus", type=bounded(0, 10_000), help="GPUs to schedule (slots on a machine without GPUs)")
    sp.add_argument("--slots", type=bounded(1, 10_000), help="most runs at once (default: max(GPUs, CPU cores))")
    sp.add_argument("--port", type=bounded(1, 65_535), help="port on 127.0.0.1")
    sp.add_argument("--storage", help="default object store: s3://bucket/prefix (default: the embedded file store)")
    sp.add_argument("--endpoint", help="S3 endpoint URL (MinIO, Ceph, IBM COS...)")
    sp.add_argument("--host", help="address to listen on (default 127.0.0.1; others need TLS or --insecure)")
    from wml_backend.daemon import add_exposure_flags
    add_exposure_flags(sp)

    sp = command("config", cmd_config, "show or set the client configuration", json_flag=True)
    sp.add_argument("action", nargs="?", choices=["show", "set"], default="show")
    sp.add_argument("key", nargs="?")
    sp.add_argument("value", nargs="?")

    sp = command("validate", cmd_validate, "check a manifest (FfDL or Watson ML format)")
    sp.add_argument("manifest")

    sp = command("upload", cmd_upload, "sync a local file or directory to BUCKET[/PREFIX]")
    sp.add_argument("path")
    sp.add_argument("bucket")

    sp = command("train", cmd_train, "submit a training definition as an experiment", json_flag=True)
    sp.add_argument("manifest")
    sp.add_argument("model", nargs="?", help="model directory or zip (default: the manifest's directory)")
    sp.add_argument("--sweep", action="append", default=[], metavar="SPEC",
                    help="a hyperparameter to search, e.g. 'lr=loguniform(1e-4,1e-1)' or 'hidden=[32,64]'")
    sp.add_argument("--runs", type=int, help="number of runs to sample")
    sp.add_argument("--wait", action="store_true", help="wait for every run to end (exit 1 if one did not complete)")
    sp.add_argument("--dry-run", choices=["kubernetes"],
                    help="print, as YAML, the objects each run would create (secrets redacted); submit nothing")

    sp = command("list", cmd_list, "list experiments, or runs with --experiment/--state", json_flag=True)
    sp.add_argument("--experiment")
    sp.add_argument("--state")

    sp = command("show", cmd_show, "show a run or an experiment", json_flag=True)
    sp.add_argument("id")

    sp = command("logs", cmd_logs, "print a run's training log")
    sp.add_argument("run")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    sp.add_argument("--learner", type=bounded(1, 10_000), default=1)

    sp = command("metrics", cmd_metrics, "print a run's metrics", json_flag=True)
    sp.add_argument("run")

    sp = command("cancel", cmd_cancel, "cancel a run or a whole experiment")
    sp.add_argument("id")

    sp = command("download", cmd_download, "download a run's results")
    sp.add_argument("run")
    sp.add_argument("dest", nargs="?", default=".")
    only = sp.add_mutually_exclusive_group()
    only.add_argument("--logs-only", action="store_true", help="only the training logs (learner-*/)")
    only.add_argument("--model", action="store_true", help="only the submitted model code (_submitted_code/)")

    command("usage", cmd_usage, "GPU quota and GPU time", json_flag=True)

    sp = command("accounts", cmd_accounts, "create an account (administrators only)")
    sp.add_argument("action", choices=["create"])
    sp.add_argument("name")
    sp.add_argument("--gpus", type=int, required=True, help="the account's GPU quota")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``wml`` with ``argv``; print one line per error, never a traceback for expected ones."""
    try:
        args = build_parser().parse_args(argv)
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
