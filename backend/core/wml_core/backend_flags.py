"""The flags of the backend's command line, defined once.

``wml-backend serve|start|stop|status`` (the server) and ``wml backend ...`` (the client, which
hands them to the server's process) both take them from here.
"""

from __future__ import annotations

import argparse
from typing import Callable

#: Flags whose value is a path or a URL, as (flag, help).
_TEXT_FLAGS = [
    ("--host", "address to listen on (default 127.0.0.1; others need TLS or --insecure)"),
    ("--storage", "default object store: s3://bucket/prefix (default: $WML_STORAGE or the embedded file store)"),
    ("--endpoint", "S3 endpoint URL of the default store (MinIO, Ceph, IBM COS...; default: $AWS_ENDPOINT_URL)"),
    ("--tls-cert", "serve HTTPS with this certificate (PEM)"),
    ("--tls-key", "the certificate's private key (PEM)"),
    ("--database", "run store shared by replicas: postgresql://user@host/db (default: $WML_DATABASE, "
                   "else SQLite under $WML_HOME)"),
]


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (argparse names the flag when it is not)."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    parse.__name__ = "whole number"  # argparse's message reads "invalid whole number value"
    return parse


def memory_size(text: str) -> str:
    """An argparse type: a memory size (``16Gi``, ``512Mi``, ``4GB``; a bare number is MB), checked
    and kept as written (``wml_core.manifest.parse_memory`` turns it into bytes)."""
    from wml_core.manifest import parse_memory
    try:
        parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_number(text: str) -> float:
    """An argparse type: a number of CPUs, above 0 (``0.5``, ``8``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1000000")
    return value


def add_limit_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The per-account limits: an account's own (``wml accounts``: ``--slots``...), or with
    ``prefix`` ``account-`` the operator's defaults (``wml backend start --account-slots``...)."""
    for flag, kind, help_text in LIMIT_FLAGS:
        parser.add_argument(f"--{prefix}{flag}", type=kind,
                            help=f"default {help_text}" if prefix else help_text)


#: Limits on what an account's runs hold at once, and on its queue: (flag, type, help).
LIMIT_FLAGS = [
    ("slots", bounded(1, 10_000), "most runs an account may hold at once"),
    ("cpus", positive_number, "most CPUs an account's runs may hold at once"),
    ("memory", memory_size, "most memory an account's runs may hold at once (16Gi, 64GB...)"),
    ("max-queued", bounded(0, 1_000_000), "most runs an account may have waiting in the queue"),
]


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """Add the backend's flags; a flag not given is None (the backend's default then holds)."""
    parser.add_argument("--executor", choices=["local", "kubernetes"], help="where runs execute (default local)")
    parser.add_argument("--gpus", type=bounded(0, 10_000), help="local executor: GPUs to schedule (slots without GPUs)")
    parser.add_argument("--slots", type=bounded(1, 10_000), help="local executor: most runs at once")
    parser.add_argument("--port", type=bounded(1, 65_535), help="port to listen on (default 8642)")
    for flag, help_text in _TEXT_FLAGS:
        parser.add_argument(flag, help=help_text)
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="allow plain HTTP on a non-loopback --host")
    parser.add_argument("--trusted-accounts", action="store_true", default=None,
                        help="allow several accounts where runs cannot get users of their own "
                             "(not root): all accounts trust each other")
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="the backend's log: text lines (default), or one JSON object a line with run ids")
    add_limit_flags(parser, prefix="account-")
    parser.add_argument("--pending-timeout", type=bounded(0, 10**7),
                        help="seconds a started run may wait to be placed before it fails (0: forever)")
    parser.add_argument("--drain", action="store_true", default=None,
                        help="stop: first stop the runs as disruptions (they store their checkpoints, "
                             "are queued again and resume at the next start)")


#: The operator's defaults of the per-account limits, and the pending timeout.
OPERATOR_LIMIT_FLAGS = [*(f"--account-{flag}" for flag, _, _ in LIMIT_FLAGS), "--pending-timeout"]


def backend_argv(args: argparse.Namespace) -> list[str]:
    """The flags ``args`` was given, as words again (to hand to the backend's process)."""
    words: list[str] = []
    for flag in ["--executor", "--gpus", "--slots", "--port", *(f for f, _ in _TEXT_FLAGS), "--log-format",
                 *OPERATOR_LIMIT_FLAGS]:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            words += [flag, str(value)]
    for flag in ("--insecure", "--trusted-accounts", "--drain"):
        if getattr(args, flag[2:].replace("-", "_"), None):
            words.append(flag)
    return words
