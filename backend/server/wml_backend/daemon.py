"""Run the backend: in the foreground (``serve``) or as a daemon under ``$WML_HOME``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import httpx
import psutil

from .errors import BackendUnavailable, InvalidInput
from .executors import Executor
from .private import private_dir
from .settings import DEFAULT_PORT, Settings, wml_home

#: Idle seconds a client connection is kept open: longer than clients' own pools keep them
#: (httpx: 5 s), so the server never closes a connection a client is about to reuse.
KEEP_ALIVE_S = 65
#: How long ``start`` waits for a new daemon to answer /healthz.
START_TIMEOUT_S = 30.0


def state_file(home: Path) -> Path:
    """Where a running daemon records its pid, URL and executor."""
    return home / "backend" / "backend.json"


def build_executor(settings: Settings) -> Executor:
    """The executor the settings name."""
    if settings.executor == "local":
        from .executors.local import LocalExecutor
        return LocalExecutor(settings.work_dir, gpus=settings.gpus, slots=settings.slots)
    if settings.executor == "kubernetes":
        from .executors.kubernetes import KubernetesExecutor
        return KubernetesExecutor.from_settings(settings)
    raise InvalidInput(f"executor: {settings.executor!r} is not one of local, kubernetes")


def serve(settings: Settings) -> None:
    """Serve the API in this process until SIGTERM/SIGINT."""
    import uvicorn

    from .api import create_app
    from .service import Service
    from .store import connect

    settings.check_exposure()
    os.umask(0o077)
    private_dir(settings.home).chmod(0o700)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(settings, connect(settings.database), build_executor(settings))
    service.start()
    capacity = service.executor.capacity()
    _write_state(settings, capacity)
    config = uvicorn.Config(create_app(service), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    try:
        uvicorn.Server(config).run()
    finally:
        service.stop()


def _write_state(settings: Settings, capacity) -> None:
    path = state_file(settings.home)
    private_dir(path.parent)
    path.write_text(json.dumps({
        "pid": os.getpid(), "url": settings.url, "port": settings.port, "executor": settings.executor,
        "gpus": len(capacity.gpu_ids), "slots": capacity.slots, "real_gpus": capacity.real_gpus,
        "started": time.time()}))


def status(home: Optional[Path] = None) -> dict:
    """Whether the daemon runs, and where: ``running``, ``url``, ``pid``, ``executor``..."""
    path = state_file(home or wml_home())
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"running": False, "url": None, "pid": None, "executor": None}
    info["running"] = psutil.pid_exists(info["pid"]) and _healthy(info["url"])
    return info


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def start(settings: Settings) -> dict:
    """Start the daemon unless one runs; wait until it answers; return its status."""
    settings.check_exposure()
    current = status(settings.home)
    if current["running"]:
        return current
    settings = _free_port(settings)
    log_path = settings.home / "backend" / "backend.log"
    private_dir(log_path.parent)
    with open(log_path, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "wml_backend.daemon", "serve", *_flags(settings)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, env={**os.environ, "WML_HOME": str(settings.home)})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        current = status(settings.home)
        if current["running"] and current.get("port") == settings.port:
            return current
        time.sleep(0.05)
    raise BackendUnavailable(f"the backend did not start within {START_TIMEOUT_S:.0f} s; see {log_path}")


def _free_port(settings: Settings) -> Settings:
    """Keep the configured (or last) port when it is free, else take any free one."""
    try:
        previous = json.loads(state_file(settings.home).read_text()).get("port")
    except (OSError, ValueError):
        previous = None
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
    flags = ["--host", settings.host, "--port", str(settings.port), "--executor", settings.executor]
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
    return flags


def stop(home: Optional[Path] = None, timeout: float = 10.0) -> bool:
    """Stop the daemon (SIGTERM, then SIGKILL); runs in flight go on and are re-attached later."""
    info = status(home)
    pid = info.get("pid")
    if not pid or not psutil.pid_exists(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
    return True


def parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m wml_backend.daemon serve``."""
    p = argparse.ArgumentParser(prog="wml-backend", description="Run the wml training backend.")
    p.add_argument("command", choices=["serve"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--executor", choices=["local", "kubernetes"], default="local")
    p.add_argument("--gpus", type=int, help="local executor: GPUs (or slots without GPUs)")
    p.add_argument("--slots", type=int, help="local executor: most runs at once")
    p.add_argument("--storage", help="default object store, s3://bucket/prefix (default: $WML_STORAGE or files)")
    p.add_argument("--endpoint", help="S3 endpoint URL of the default store (default: $AWS_ENDPOINT_URL)")
    add_exposure_flags(p)
    return p


def add_exposure_flags(p: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key and --insecure: what serving beyond loopback requires."""
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow plain HTTP on a non-loopback --host")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; flags not given keep their defaults (environment included)."""
    given = {"host": args.host, "port": args.port, "executor": args.executor, "gpus": args.gpus,
             "slots": args.slots, "storage_url": args.storage, "endpoint": args.endpoint,
             "tls_cert": args.tls_cert, "tls_key": args.tls_key, "insecure": args.insecure}
    return Settings(**{k: v for k, v in given.items() if v is not None})


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of ``wml-backend serve``; a configuration error is one line and exit 2."""
    try:
        serve(settings_from(parser().parse_args(argv)))
    except InvalidInput as exc:
        print(f"wml-backend: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
