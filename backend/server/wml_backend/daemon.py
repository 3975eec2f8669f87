"""Run the backend: in the foreground (``serve``) or as a daemon under ``$WML_HOME``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from wml_core import daemon_state
from wml_core.backend_flags import add_backend_flags
from wml_core.errors import BackendUnavailable, InvalidInput
from wml_core.manifest import parse_memory
from wml_backend import logs
from wml_backend.executors import Executor
from wml_core.private_files import private_dir, private_open
from wml_backend.settings import Settings
from wml_core.objectstore.resolve import wml_home

#: Idle seconds a client connection is kept open: longer than clients' own pools keep them
#: (httpx: 5 s), so the server never closes a connection a client is about to reuse.
KEEP_ALIVE_S = 65
#: Seconds a stopping daemon lets requests in flight finish before it cancels them (under
#: ``stop``'s own 10 s wait before it kills the daemon).
GRACEFUL_SHUTDOWN_S = 5.0
#: How long ``start`` waits for a new daemon to answer /healthz.
START_TIMEOUT_S = 30.0
#: Seconds ``stop --drain`` waits, beyond a plain stop's, for the runs to store their checkpoints
#: (the executor's grace, the kill of those that outlive it, their reports).
DRAIN_TIMEOUT_S = 120.0
#: Settings of the operator's per-account defaults and pending timeout, and their flags.
OPERATOR_SETTINGS = {"account_slots": "--account-slots", "account_cpus": "--account-cpus",
                     "account_memory_bytes": "--account-memory", "account_max_queued": "--account-max-queued",
                     "pending_timeout_s": "--pending-timeout"}


def build_executor(settings: Settings) -> Executor:
    """The executor the settings name."""
    if settings.executor == "local":
        from wml_backend.executors.local import LocalExecutor
        return LocalExecutor(settings.work_dir, gpus=settings.gpus, slots=settings.slots)
    if settings.executor == "kubernetes":
        from wml_backend.executors.kubernetes import KubernetesExecutor
        return KubernetesExecutor.from_settings(settings)
    raise InvalidInput(f"executor: {settings.executor!r} is not one of local, kubernetes")


def check_executor(settings: Settings) -> None:
    """Refuse at once, with one line, settings the executor would refuse once started."""
    if settings.executor == "kubernetes":
        from wml_backend.executors.kubernetes import check_settings
        check_settings(settings)


def serve(settings: Settings) -> None:
    """Serve the API in this process until SIGTERM/SIGINT."""
    import uvicorn

    from wml_backend.api import create_app
    from wml_backend.service import Service
    from wml_backend.rundb import connect

    settings.check_exposure()
    os.umask(0o077)
    for folder in (settings.home, settings.home / "backend"):  # made private too if an older version did not
        private_dir(folder).chmod(0o700)
    logs.configure(settings.log_format)
    service = Service(settings, connect(settings.database, settings.secrets_key_file), build_executor(settings))
    service.start()
    capacity = service.executor.capacity()
    _write_state(settings, capacity, service.leadership.replica.id)
    own_log = {"log_config": None} if settings.log_format == "json" else {}  # the web server's lines as JSON too
    config = uvicorn.Config(create_app(service), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key, **own_log)
    server = _server(config, service)
    # What startup built (modules, the app, the service) lives as long as the process: out of the
    # collector's sight, a full collection under load walks only what requests made, instead of
    # pausing every request for 100+ ms over the whole startup heap.
    gc.freeze()
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=_drain, args=(service, server), daemon=True,
                                                              name="wml-drain").start())
    # uvicorn stops on SIGTERM, then raises it again with the handler it found: this one, so that the
    # service stops too and the process exits as a clean one (the default handler would kill it there).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    finally:
        service.stop()


def _exit_cleanly(*_) -> None:
    """SIGTERM once the server has stopped: unwind (the service stops, exit handlers run), exit 0."""
    raise SystemExit(0)


def _server(config, service):
    """uvicorn's server, which ends the event streams when it stops: it waits for the requests
    in flight to end, and a stream (a live display's, the sidebar's) never ends by itself."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await asyncio.to_thread(service.events.close)
            await super().shutdown(sockets)
    return Server(config)


def _drain(service, server) -> None:
    """``stop --drain``: stop the runs as disruptions while their runners can still report here, then exit."""
    try:
        service.lifecycle.drain()
    finally:
        server.should_exit = True


def _write_state(settings: Settings, capacity, replica: str) -> None:
    daemon_state.write_state(settings.home, {
        "pid": os.getpid(), "url": settings.url, "port": settings.port, "executor": settings.executor,
        "gpus": len(capacity.gpu_ids), "slots": capacity.slots, "real_gpus": capacity.real_gpus,
        "started": time.time(), "database": without_password(settings.database), "replica": replica})


def without_password(database: str) -> str:
    """A database URL as it may be shown: its password left out."""
    parts = urlsplit(database)
    if not parts.password:
        return database
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}@{host}"))


def with_replicas(info: dict, home: Optional[Path] = None) -> dict:
    """A running daemon's status with the replicas that share its database and which one leads
    (``replicas``), as the daemon reads them there; asked from this host, or with the token in
    ``$WML_HOME`` when its URL is another host's."""
    if not info.get("running"):
        return info
    token_file = (home or wml_home()) / "backend" / "token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
    try:
        response = httpx.get(f"{info['url']}/v1/replicas", headers=headers, timeout=daemon_state.HEALTH_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError:
        return info  # an older daemon, or not ours to ask
    return {**info, "replicas": response.json()}


def status(home: Optional[Path] = None) -> dict:
    """Whether the daemon runs, and where: ``running``, ``url``, ``pid``, ``executor``..."""
    return daemon_state.status(home or wml_home())


def start(settings: Settings) -> dict:
    """Start the daemon unless one runs; wait until it answers; return its status."""
    settings.check_exposure()
    check_executor(settings)
    current = status(settings.home)
    if current["running"]:
        return current
    settings = _free_port(settings)
    log_path = settings.home / "backend" / "backend.log"
    private_dir(log_path.parent)
    with private_open(log_path, "ab") as log:
        database = {"WML_DATABASE": settings.database_url} if settings.database_url else {}  # not in ps
        subprocess.Popen([sys.executable, "-m", "wml_backend.daemon", "serve", *_flags(settings)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "WML_HOME": str(settings.home), **database})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        current = status(settings.home)
        if current["running"] and current.get("port") == settings.port:
            return current
        time.sleep(0.05)
    raise BackendUnavailable(f"the backend did not start within {START_TIMEOUT_S:.0f} s; see {log_path}")


def _free_port(settings: Settings) -> Settings:
    """Keep the configured (or last) port when it is free, else take any free one."""
    previous = daemon_state.read_state(settings.home).get("port")
    for port in (settings.port, previous, 0):
        if port is None:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is fine
            try:
                sock.bind((settings.host, port))
            except OSError:
                continue
            chosen = sock.getsockname()[1]
        return Settings(**{**asdict(settings), "port": chosen})
    raise BackendUnavailable("no free port for the backend")


def _flags(settings: Settings) -> list[str]:
    flags = ["--host", settings.host, "--port", str(settings.port), "--executor", settings.executor,
             "--log-format", settings.log_format]
    if settings.gpus is not None:
        flags += ["--gpus", str(settings.gpus)]
    if settings.slots is not None:
        flags += ["--slots", str(settings.slots)]
    if settings.storage_url:
        flags += ["--storage", settings.storage_url]
    if settings.endpoint:
        flags += ["--endpoint", settings.endpoint]
    if settings.tls_cert:
        flags += ["--tls-cert", settings.tls_cert, "--tls-key", settings.tls_key or ""]
    if settings.insecure:
        flags += ["--insecure"]
    if settings.trusted_accounts:
        flags += ["--trusted-accounts"]
    return flags + _operator_flags(settings)


def _operator_flags(settings: Settings) -> list[str]:
    """The operator's per-account defaults and pending timeout, as flags again."""
    words: list[str] = []
    for name, flag in OPERATOR_SETTINGS.items():
        value = getattr(settings, name)
        if value is not None:  # memory as KiB: exact for any whole number of bytes
            words += [flag, f"{value / 1024!r}Ki" if name == "account_memory_bytes" else str(value)]
    return words


def _operator_given(args: argparse.Namespace) -> dict:
    """The operator's per-account defaults and pending timeout among parsed flags, as settings."""
    given = {name: getattr(args, flag[2:].replace("-", "_"), None) for name, flag in OPERATOR_SETTINGS.items()}
    if given["account_memory_bytes"] is not None:
        given["account_memory_bytes"] = parse_memory(given["account_memory_bytes"])
    return given


def stop(home: Optional[Path] = None, timeout: float = 10.0, drain: bool = False) -> bool:
    """Stop the daemon (SIGTERM, then SIGKILL); runs in flight go on and are re-attached later.
    With ``drain`` (SIGUSR1) it first stops its runs as disruptions: they store checkpoints and
    are queued again, to resume at the next start."""
    info = status(home)
    pid = info.get("pid")
    if not pid or not psutil.pid_exists(pid):
        return False
    os.kill(pid, signal.SIGUSR1 if drain else signal.SIGTERM)
    if drain:
        timeout += DRAIN_TIMEOUT_S
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return True


def parser() -> argparse.ArgumentParser:
    """Arguments of ``wml-backend`` (``wml backend`` takes the same and hands them over)."""
    p = argparse.ArgumentParser(prog="wml-backend", description="Run the wml training backend.")
    p.add_argument("command", choices=["serve", "start", "stop", "status"],
                   help="serve in the foreground; start, stop or query the daemon (prints JSON)")
    add_backend_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; flags not given keep their defaults (environment included)."""
    given = {"host": args.host, "port": args.port, "executor": args.executor, "gpus": args.gpus,
             "slots": args.slots, "storage_url": args.storage, "endpoint": args.endpoint,
             "tls_cert": args.tls_cert, "tls_key": args.tls_key, "insecure": args.insecure,
             "trusted_accounts": args.trusted_accounts,
             "database_url": args.database, "log_format": args.log_format, **_operator_given(args)}
    return Settings(**{k: v for k, v in given.items() if v is not None})


def main(argv: Optional[list[str]] = None) -> None:
    """``wml-backend serve|start|stop|status``; an error is one line, exit 2 (input) or 1."""
    args = parser().parse_args(argv)
    try:
        if args.drain and args.command != "stop":
            raise InvalidInput("--drain: only `stop` drains (stops the runs so that they resume at the next start)")
        if args.command == "serve":
            serve(settings_from(args))
            return
        if args.command == "start":
            settings = settings_from(args)
            info = with_replicas(start(settings), settings.home)
        elif args.command == "stop":
            stopped = stop(drain=bool(args.drain))
            info = {**status(), "stopped": stopped}
        else:
            info = with_replicas(status())
    except (InvalidInput, BackendUnavailable) as exc:
        print(f"wml-backend: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InvalidInput) else 1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
