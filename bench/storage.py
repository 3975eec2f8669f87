"""Benchmark ``wml upload`` against ``aws s3 sync``, each run as a cold process.

Usage: ``python bench/storage.py [--small 2000] [--big 20] [--big-mb 20] [--repeat 3] [--quick]``
(prints figures and ratios; not a test).

The store is MinIO (a real S3 server, built by ``scripts/minio/build.sh`` and cached; see
``tests/minioserver.py``), or moto's server where MinIO is not built (the output says which).
A backend runs on the same store before anything is timed, as a user's does: ``wml upload``
claims its destination there before it sends a byte.

Every measurement is one fresh process, as a user runs it: ``python -m wml_jupyter upload DIR
BUCKET`` (the ``wml upload`` command, progress bars included; the project's bytecode is compiled first,
as installing it does) and ``aws s3 sync DIR s3://BUCKET``
(the ``aws`` on PATH, a pyenv shim resolved to its real program; without one, awscli in an
environment of its own, see peer_env.py). Time is wall-clock from start to exit; peak memory is
the process's maximum resident set as the kernel counted it (``wait4``). Each tool runs
``--repeat`` times, the two taking turns to go first; the best time and the largest peak RSS are
printed.

Scenarios and goals (aws s3 sync's time / ours, measured in the same run):
  (a) N files of 4 KB, fresh upload     ≥ 2×
  (b) M files of 20 MB, fresh upload    ≥ 1×
  (c) re-sync of (a), nothing changed   ≥ 5×
and in each, peak RSS of ours ≤ 1.5× aws s3 sync's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from peer_env import peer_python

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_process import BackendProcess  # noqa: E402

GOALS = {"a": 2.0, "b": 1.0, "c": 5.0}
#: Peak RSS of ``wml upload`` at most this many times ``aws s3 sync``'s.
MEMORY_GOAL = 1.5
TOOLS = ("ours", "aws")

#: Runs a command and writes its wall seconds and peak RSS (KiB) to a file. A process's peak RSS
#: counts the memory of the process it was forked from (the kernel keeps the larger across exec),
#: so the command is forked from this small interpreter, not from the benchmark's.
LAUNCHER = """
import os, sys, time
started = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
with open(sys.argv[1], "w") as out:
    out.write(f"{wall} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""

MOTO = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


# -- the store ------------------------------------------------------------------------------

@contextmanager
def s3_server(work: Path):
    """(description, endpoint, credential variables) of a running S3 server: MinIO if built, else moto."""
    from minioserver import MinIO, minio_binary
    binary = minio_binary()
    if binary is not None:
        folder = work / "minio"
        folder.mkdir()
        server = MinIO(binary, folder)
        try:
            env = server.env()
            yield f"MinIO ({binary.parent.name})", server.endpoint, env
        finally:
            server.stop()
        return
    proc = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        endpoint = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
        yield "moto server (MinIO not built: bash scripts/minio/build.sh)", endpoint, env
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait()


def admin_store():
    """A store of the benchmark's own (bucket making and clean-up), from the environment."""
    from wml_core.objectstore import StoreConfig, open_store
    return open_store(StoreConfig(kind="s3"))


def drop_bucket(store, bucket: str) -> None:
    """Delete ``bucket`` and everything in it (MinIO keeps objects on disk)."""
    store.delete_prefix(bucket, "")
    store.client.delete_bucket(Bucket=bucket)


# -- the tools, each run in its own process -------------------------------------------------

def aws_cli() -> tuple[list[str], str]:
    """The ``aws`` command (PATH's, a pyenv shim resolved; else awscli in its own environment)
    and its version."""
    found = shutil.which("aws")
    if found and "shims" in Path(found).parts and shutil.which("pyenv"):
        real = subprocess.run(["pyenv", "which", "aws"], capture_output=True, text=True)
        found = real.stdout.strip() if real.returncode == 0 else found
    argv = [found] if found else [str(peer_python("awscli")[0]), "-m", "awscli"]
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
    return argv, (out.stdout or out.stderr).split()[0]


def command(tool: str, src: Path, bucket: str, endpoint: str, aws: list[str]) -> list[str]:
    """The command line of ``tool`` syncing ``src`` to ``bucket``."""
    if tool == "aws":
        return [*aws, "s3", "sync", str(src), f"s3://{bucket}/", "--endpoint-url", endpoint,
                "--only-show-errors"]
    return [sys.executable, "-m", "wml_jupyter", "upload", str(src), bucket]


def measure(argv: list[str], env: dict, work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process run to its end (timed by ``LAUNCHER``)."""
    figures = work / "figures"
    with tempfile.TemporaryFile(dir=work) as out:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(figures), *argv], env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode:
            out.seek(0)
            sys.exit(f"{' '.join(argv[:4])} failed ({proc.returncode}): {out.read().decode()[-800:]}")
    wall, kib = figures.read_text().split()
    return float(wall), int(kib) / 1024


def compile_bytecode() -> None:
    """Write the bytecode of the packages ``wml upload`` runs, as installing them does: where
    PYTHONDONTWRITEBYTECODE is set (a development shell) every cold run would compile the
    project's modules again, while aws's were compiled when it was installed."""
    import compileall
    import importlib.util
    for package in ("wml_jupyter", "wml_core"):
        for folder in importlib.util.find_spec(package).submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def make_files(root: Path, count: int, size: int) -> Path:
    """``count`` random files of ``size`` bytes, 100 per folder."""
    for i in range(count):
        path = root / f"dir {i // 100:03d}" / f"file {i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


# -- the run --------------------------------------------------------------------------------

def scenario(name: str, src: Path, repeat: int, ctx: dict, fresh: bool) -> dict[str, list[tuple[float, float]]]:
    """Each tool ``repeat`` times on ``src`` (taking turns to go first); its (seconds, MB) runs.

    A fresh upload goes to a new bucket, dropped afterwards unless (c) re-syncs it; a re-sync
    goes to the bucket (a) filled for the same tool and round."""
    results: dict[str, list[tuple[float, float]]] = {tool: [] for tool in TOOLS}
    for round_ in range(repeat):
        for tool in TOOLS if round_ % 2 == 0 else TOOLS[::-1]:
            bucket = f"{tool}-{'a' if not fresh else name}-{round_}"
            if fresh:
                ctx["store"].create_bucket(bucket)
            argv = command(tool, src, bucket, ctx["endpoint"], ctx["aws"])
            results[tool].append(measure(argv, ctx["env"], ctx["work"]))
            print(f"    ({name}) round {round_ + 1} {tool:<4} {results[tool][-1][0]:7.2f} s", flush=True)
            if fresh and name != "a":
                drop_bucket(ctx["store"], bucket)
    return results


def report(name: str, title: str, results: dict[str, list[tuple[float, float]]]) -> None:
    """Print one scenario: best time and peak RSS of each tool, the ratios and the goals' verdicts."""
    ours_s, ours_mb = min(s for s, _ in results["ours"]), max(mb for _, mb in results["ours"])
    aws_s, aws_mb = min(s for s, _ in results["aws"]), max(mb for _, mb in results["aws"])
    speed, memory = aws_s / ours_s, ours_mb / aws_mb
    print(f"\n({name}) {title}")
    print(f"  wml upload    {ours_s:7.2f} s  peak RSS {ours_mb:5.0f} MB")
    print(f"  aws s3 sync   {aws_s:7.2f} s  peak RSS {aws_mb:5.0f} MB")
    print(f"  speed: wml upload {speed:.2f}× aws s3 sync's "
          f"(goal ≥ {GOALS[name]:.0f}×: {_met(speed >= GOALS[name])})")
    print(f"  memory: wml upload {memory:.2f}× aws s3 sync's "
          f"(goal ≤ {MEMORY_GOAL}×: {_met(memory <= MEMORY_GOAL)})")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="files in (a) and (c)")
    parser.add_argument("--big", type=int, default=20, help="files in (b)")
    parser.add_argument("--big-mb", type=int, default=20, help="size of each file in (b), MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool per scenario (best is shown)")
    parser.add_argument("--quick", action="store_true", help="500 small files, 5 big, 2 runs each")
    args = parser.parse_args()
    if args.quick:
        args.small, args.big, args.repeat = 500, 5, 2
    work = Path(tempfile.mkdtemp(prefix="wml-bench-"))
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            server, endpoint, store_env = stack.enter_context(s3_server(work))
            os.environ.update(store_env)
            store = admin_store()
            store.create_bucket("bench")
            backend = BackendProcess(work / "backend-home", gpus=1,
                                     extra_env={**store_env, "WML_STORAGE": "s3://bench"})
            stack.callback(backend.close)
            backend.start()
            env = {**os.environ, "WML_HOME": str(work / "home"), "WML_STORAGE": "s3://bench",
                   "WML_BACKEND": backend.url, "WML_TOKEN": backend.token}
            aws, version = aws_cli()
            print(f"store: {server}; aws s3 sync: {version} ({' '.join(aws)}); {args.repeat} run(s) of each")
            ctx = {"store": store, "endpoint": endpoint, "env": env, "aws": aws, "work": work}
            run(args, ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal bench time {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs")


def run(args, ctx: dict) -> None:
    """Make the data, then time scenarios (a), (b) and (c)."""
    compile_bytecode()
    print("making the files", flush=True)
    small = make_files(ctx["work"] / "small", args.small, 4096)
    big = make_files(ctx["work"] / "big", args.big, args.big_mb * 1_000_000)
    figures = [("a", f"{args.small} files of 4 KB, fresh upload", scenario("a", small, args.repeat, ctx, True)),
               ("b", f"{args.big} files of {args.big_mb} MB, fresh upload",
                scenario("b", big, args.repeat, ctx, True)),
               ("c", "re-sync of (a), nothing changed", scenario("c", small, args.repeat, ctx, False))]
    for name, title, results in figures:
        report(name, title, results)


if __name__ == "__main__":
    main()
