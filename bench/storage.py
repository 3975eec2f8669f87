"""Benchmark ``wml upload`` against ``aws s3 sync`` and a naive boto3 loop.

Usage: ``python bench/storage.py [--small 2000] [--big 20] [--big-mb 20] [--quick]`` (prints
ratios; not a test). One moto S3 server runs in a separate process for the whole run. Every tool
runs as its own cold process, as a user would run it: "ours" is ``python -m wml_jupyter upload``
(the ``wml upload`` command, progress bars included) with ``WML_STORAGE`` and ``AWS_ENDPOINT_URL``
naming the server and ``WML_BACKEND`` a backend already running on the same store, as a user's
is (the command claims its destination there before it sends a byte). "ours, warm" is the same
sync (``wml_core.objectstore.sync.upload``, no claim) called
inside this already-running process with a store made beforehand, as in a notebook kernel or
the backend, where boto3 is imported and the client exists. Peak memory is each process's peak
RSS, sampled every 10 ms (goal: ours within 1.5x of aws s3 sync's). ``aws`` is the one on PATH;
without one, awscli is installed into an environment of its own (peer_env.py).

Scenarios and goals (time of the other tool / ours):
  (a) N small files (4 KB) uploaded fresh       ≥ 2× aws s3 sync
  (b) M big files (20 MB) uploaded fresh        ≥ 1× aws s3 sync
  (c) re-sync of (a), nothing changed           ≥ 5× aws s3 sync
For (c) the naive loop is a HEAD per file comparing sizes (it has no other way to skip).
Each scenario also prints the server floor: the time moto alone needs for the same requests
sent as raw unsigned HTTP with 8 threads and no client work (PUTs timed on a sample and
scaled). No client can beat it, so it bounds every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import urllib3

from peer_env import peer_python

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_process import BackendProcess  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
GOALS = {"a": 2.0, "b": 1.0, "c": 5.0}
#: Peak RSS of ``wml upload`` at most this many times ``aws s3 sync``'s.
MEMORY_GOAL = 1.5

SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


# -- the tools, each run in its own process -------------------------------------------------

def worker(tool: str, src: str, bucket: str, endpoint: str) -> None:
    """Run one naive tool in this process and print its in-process seconds as JSON."""
    started = time.monotonic()
    naive(src, bucket, endpoint, check_first=tool == "naive-head")
    print(json.dumps({"seconds": time.monotonic() - started}))


def naive(src: str, bucket: str, endpoint: str, check_first: bool) -> None:
    """One ``upload_file`` per file, in order; with ``check_first``, a HEAD decides."""
    import boto3
    from botocore.exceptions import ClientError
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        key = path.relative_to(src).as_posix()
        if check_first:
            try:
                if client.head_object(Bucket=bucket, Key=key)["ContentLength"] == \
                        path.stat().st_size:
                    continue
            except ClientError:
                pass
        client.upload_file(str(path), bucket, key)


def aws_cli() -> tuple[list[str], str]:
    """The ``aws`` command (PATH's, else awscli in its own environment) and its version."""
    found = shutil.which("aws")
    argv = [found] if found else [str(peer_python("awscli")[0]), "-m", "awscli"]
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
    return argv, (out.stdout or out.stderr).split()[0]


def command(tool: str, src: Path, bucket: str, endpoint: str, aws: list[str]) -> list[str]:
    """The command line of ``tool`` syncing ``src`` to ``bucket``."""
    if tool == "aws":
        return [*aws, "s3", "sync", str(src), f"s3://{bucket}/", "--endpoint-url", endpoint,
                "--only-show-errors"]
    if tool == "ours":
        return [sys.executable, "-m", "wml_jupyter", "upload", str(src), bucket]
    return [sys.executable, __file__, "worker", tool, str(src), bucket, endpoint]


def measure(argv: list[str], env: dict) -> dict:
    """Wall seconds and peak RSS (MB) of one process; its JSON output if any."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.monotonic() - started
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{argv[:4]} failed: {err.decode()[-500:]}")
    last = out.splitlines()[-1] if out.strip() else b""
    inner = json.loads(last) if last.startswith(b"{") else {}  # the naive tools' own timing
    return {"wall": wall, "rss_mb": peak / 1e6, "inner": inner.get("seconds")}


# -- data and server ------------------------------------------------------------------------

def make_files(root: Path, count: int, size: int) -> Path:
    """``count`` random files of ``size`` bytes, 100 per folder."""
    for i in range(count):
        path = root / f"dir {i // 100:03d}" / f"file {i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def start_backend(work: Path, endpoint: str) -> BackendProcess:
    """The user's backend, running before anything is timed, with the S3 server as its store."""
    make_bucket(endpoint, "bench")
    env = {**CREDENTIALS, "WML_STORAGE": "s3://bench", "AWS_ENDPOINT_URL": endpoint}
    return BackendProcess(work / "backend-home", gpus=1, extra_env=env).start()


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3
    boto3.client("s3", endpoint_url=endpoint, **_boto_args()).create_bucket(Bucket=bucket)


def _boto_args() -> dict:
    return {"aws_access_key_id": "bench", "aws_secret_access_key": "bench",
            "region_name": "us-east-1"}


# -- the server floor -----------------------------------------------------------------------

def floor_puts(endpoint: str, files: list[Path], sample: int) -> float:
    """Seconds moto needs to store ``files`` (raw PUTs of a sample, scaled to all)."""
    http, chosen = urllib3.PoolManager(maxsize=8), files[:sample]
    make_bucket(endpoint, "floor-put")

    def put(path: Path) -> None:
        http.request("PUT", f"{endpoint}/floor-put/{path.name}", body=path.read_bytes(),
                     headers={"Authorization": "AWS4-HMAC-SHA256 Credential=bench/x/"})
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, chosen))
    return (time.monotonic() - started) * len(files) / len(chosen)


def floor_list(endpoint: str, bucket: str) -> float:
    """Seconds moto needs to answer every LIST page of ``bucket``, unparsed."""
    http, token, started = urllib3.PoolManager(), None, time.monotonic()
    while True:
        fields = {"list-type": "2", **({"continuation-token": token} if token else {})}
        body = http.request("GET", f"{endpoint}/{bucket}", fields=fields).data.decode()
        found = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", body)
        if not found:
            return time.monotonic() - started
        token = found.group(1)


# -- the run --------------------------------------------------------------------------------

def scenario(src: Path, endpoint: str, env: dict, tools: dict, warm, fresh: bool,
             cleanup: bool = False, aws: list[str] = ()) -> dict:
    """Time each tool on ``src``; ``tools`` maps a label to (tool, bucket).

    With ``cleanup`` each tool's objects are deleted after it ran, so every tool finds the
    server in the same state (moto keeps objects in memory).
    """
    results = {}
    for label, (tool, bucket) in tools.items():
        if fresh:
            make_bucket(endpoint, bucket)
        if tool == "warm":
            from wml_core.objectstore.sync import upload
            started = time.monotonic()
            upload(warm, src, bucket)
            results[label] = {"wall": time.monotonic() - started, "rss_mb": None, "inner": None}
        else:
            results[label] = measure(command(tool, src, bucket, endpoint, aws), env)
        print(f"    {label:<12} {results[label]['wall']:7.2f} s", flush=True)
        if cleanup:
            warm.delete_prefix(bucket, "")
    return results


def report(name: str, title: str, results: dict, floor: float) -> None:
    """Print one scenario: each tool's time, memory and speed-up over it; the goal's verdict."""
    print(f"\n({name}) {title}")
    print(f"  {'server floor':<12} {floor:7.2f} s  (moto alone: no client can be faster)")
    for label, r in results.items():
        inner = f"  (in-process {r['inner']:.2f} s)" if r["inner"] else ""
        rss = f"peak RSS {r['rss_mb']:6.0f} MB" if r["rss_mb"] else "in this process      "
        ratio = "" if label.startswith("ours") else \
            f"  ours {r['wall'] / results['ours']['wall']:4.1f}× faster" \
            f" (warm {r['wall'] / results['ours, warm']['wall']:4.1f}×)"
        print(f"  {label:<12} {r['wall']:7.2f} s  {rss}{ratio}{inner}")
    aws = results["aws s3 sync"]["wall"]
    cold, warm = aws / results["ours"]["wall"], aws / results["ours, warm"]["wall"]
    print(f"  goal ≥ {GOALS[name]:.0f}× aws s3 sync: {cold:.1f}× cold ({_verdict(cold, name)}), "
          f"{warm:.1f}× warm ({_verdict(warm, name)})")
    memory = results["ours"]["rss_mb"] / results["aws s3 sync"]["rss_mb"]
    print(f"  peak RSS ours / aws s3 sync: {memory:.2f}× (goal ≤ {MEMORY_GOAL}×: "
          f"{'met' if memory <= MEMORY_GOAL else 'NOT met'})")


def _verdict(ratio: float, name: str) -> str:
    return "met" if ratio >= GOALS[name] else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="files in (a) and (c)")
    parser.add_argument("--big", type=int, default=20, help="files in (b)")
    parser.add_argument("--big-mb", type=int, default=20, help="size of each file in (b), MB")
    parser.add_argument("--quick", action="store_true", help="500 small and 5 big files (about a minute)")
    args = parser.parse_args()
    if args.quick:
        args.small, args.big = 500, 5
    work = Path(tempfile.mkdtemp(prefix="wml-bench-"))
    os.environ.update(CREDENTIALS, WML_HOME=str(work / "home-warm"))
    server, endpoint = start_server()
    backend = None
    began = time.monotonic()
    try:
        backend = start_backend(work, endpoint)
        env = {**os.environ, **CREDENTIALS, "WML_HOME": str(work / "home"), "AWS_ENDPOINT_URL": endpoint,
               "WML_STORAGE": "s3://bench", "WML_BACKEND": backend.url, "WML_TOKEN": backend.token}
        run(args, work, endpoint, env)
    finally:
        if backend:
            backend.close()
        server.stdin.close()
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal bench time {time.monotonic() - began:.0f} s on {os.cpu_count()} CPUs")


def run(args, work: Path, endpoint: str, env: dict) -> None:
    """Make the data, then time scenarios (a), (b) and (c)."""
    from wml_core.objectstore import StoreConfig, open_store
    warm = open_store(StoreConfig(kind="s3", endpoint=endpoint))
    warm.bucket_exists("warm-up")
    aws, version = aws_cli()
    print(f"aws s3 sync: {version} ({' '.join(aws)}); making the files", flush=True)
    small = make_files(work / "small", args.small, 4096)
    big = make_files(work / "big", args.big, args.big_mb * 1_000_000)
    for name, src, title, sample in (
            ("a", small, f"{args.small} files of 4 KB, fresh upload", 500),
            ("b", big, f"{args.big} files of {args.big_mb} MB, fresh upload", 4)):
        tools = {"ours": ("ours", f"ours-{name}"), "ours, warm": ("warm", f"warm-{name}"),
                 "aws s3 sync": ("aws", f"aws-{name}"), "boto3 loop": ("naive", f"naive-{name}")}
        print(f"measuring ({name}) {title} ...", flush=True)
        results = scenario(src, endpoint, env, tools, warm, fresh=True, cleanup=name == "b", aws=aws)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        report(name, title, results, floor_puts(endpoint, files, sample))
    tools = {"ours": ("ours", "ours-a"), "ours, warm": ("warm", "warm-a"),
             "aws s3 sync": ("aws", "aws-a")}
    print("measuring (c) re-sync of (a), nothing changed ...", flush=True)
    runs = [scenario(small, endpoint, env, tools, warm, fresh=False, aws=aws) for _ in range(2)]
    best = {label: min((r[label] for r in runs), key=lambda r: r["wall"]) for label in tools}
    best.update(scenario(small, endpoint, env, {"HEAD loop": ("naive-head", "naive-a")}, warm,
                         fresh=False))
    report("c", "re-sync of (a), nothing changed (best of 2; HEAD loop once)", best,
           min(floor_list(endpoint, "ours-a") for _ in range(2)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(*sys.argv[2:6])
    else:
        main()
