"""Scale: a run store holding 100,000 runs, 20,000 of them queued across 100 accounts, in SQLite
and in PostgreSQL (started as tests/pgserver.py starts one; said so when it cannot start).

Prints, for each store, beside its baseline measured in the same run:
  admission pass p99   reading the queues' heads and planning, vs the old path (the whole queue)
  list p99             ``GET /v1/runs?limit=100`` (random pages of an account with 1,000 runs),
                       vs the old unpaged ``GET /v1/runs`` of the same account
  submit p99           ``POST /v1/experiments`` of a 100-run sweep, vs the same on an empty store
  fan-out p99          from a run's cancel to the last of 200 ``/v1/events`` subscribers
                       receiving its event, vs one subscriber
(The issue measured the old paths at 20,000 queued: list 8.6 s, one admission pass 0.74 s.)

The backend serves with no GPUs, so the 1-GPU runs stay queued while it runs. The store is
seeded with bulk SQL, not through the API, so seeding takes seconds; PostgreSQL then gathers
its planner's statistics (``ANALYZE``), as autovacuum does on its own after a bulk load.

    python bench/scale.py [--stores sqlite,postgres] [--rounds 200] [--accounts 100]

``--accounts 20`` seeds a fifth of it (20,000 runs, 4,000 queued): a quick first look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from backend_process import BackendProcess  # noqa: E402
from sweep_overhead import percentile  # noqa: E402
from wml_backend.executors import Capacity  # noqa: E402
from wml_backend.lifecycle import token_hash  # noqa: E402
from wml_backend.rundb import Account, RunStore, SqliteRunStore  # noqa: E402
from wml_backend.scheduler import limits_of, plan_admissions, plan_from_heads  # noqa: E402
from wml_backend.settings import Settings  # noqa: E402
from wml_core.states import RunState  # noqa: E402

ACCOUNTS, EXPERIMENTS_PER_ACCOUNT, RUNS_PER_EXPERIMENT, QUEUED_EXPERIMENTS = 100, 10, 100, 2
SUBSCRIBERS = 200
DEFINITION = json.dumps({"name": "scale", "framework": "custom", "command": "true", "gpus": 1, "learners": 1,
                         "max_retries": 0, "search": {"algorithm": "grid", "metric": "acc"}})
_RUN_COLUMNS = ("id", "experiment_id", "account", "name", "state", "hparams", "gpus", "learners", "created",
                "metrics", "results")
T0 = time.time() - 86_400


def token(account: str) -> str:
    """The seeded account's bearer token."""
    return f"scale-token-{account}"


def seed_rows() -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Experiments, runs and transitions: each account's newest experiments queued, the others completed."""
    experiments, runs, transitions = [], [], []
    done = [RunState.QUEUED, RunState.PENDING, RunState.DOWNLOADING, RunState.PROCESSING, RunState.STORING,
            RunState.COMPLETED]
    for a in range(ACCOUNTS):
        account = f"a{a}"
        for e in range(EXPERIMENTS_PER_ACCOUNT):
            exp_id, created = f"s{a}x{e}", T0 + e * 60 + a
            queued = e >= EXPERIMENTS_PER_ACCOUNT - QUEUED_EXPERIMENTS
            experiments.append((exp_id, account, f"scale-{e}", DEFINITION, "acc", "max", created))
            for n in range(RUNS_PER_EXPERIMENT):
                run_id = f"{exp_id}-{n:03d}"
                state = RunState.QUEUED if queued else RunState.COMPLETED
                runs.append((run_id, exp_id, account, f"r{n}", state.value, json.dumps({"x": n}), 1, 1, created,
                             "{}" if queued else json.dumps({"acc": n / 100, "step": 3}), f"r/{run_id}/"))
                for k, s in enumerate(done[:1] if queued else done):
                    transitions.append((run_id, s.value, created + k, 1))
    return experiments, runs, transitions


def bulk(store: RunStore, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert ``rows`` at once: SQLite's executemany in one transaction, PostgreSQL's COPY."""
    if isinstance(store, SqliteRunStore):
        with store._tx() as db:
            db.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})", rows)
        return
    with store._lock, store._conn().cursor() as cursor:
        with cursor.copy(f"COPY {table} ({','.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def seed(store: RunStore) -> float:
    """Fill ``store``; the seconds it took."""
    started = time.monotonic()
    for a in range(ACCOUNTS):
        store.create_account(Account(name=f"a{a}", gpu_quota=8), token_hash(token(f"a{a}")))
    experiments, runs, transitions = seed_rows()
    bulk(store, "experiments", ("id", "account", "name", "definition", "metric", "mode", "created"), experiments)
    bulk(store, "runs", _RUN_COLUMNS, runs)
    bulk(store, "transitions", ("run_id", "state", "time", "attempt"), transitions)
    if not isinstance(store, SqliteRunStore):  # what autovacuum does soon after a bulk load, here at once
        with store._lock:
            store._conn().execute("ANALYZE")
    return time.monotonic() - started


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    """Seconds each of ``rounds`` calls took."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def admission(store: RunStore, rounds: int) -> tuple[list[float], list[float]]:
    """One admission pass's reads and plan, from the queues' heads and (the old path) from the whole queue."""
    settings = Settings(home=Path(tempfile.gettempdir()))
    capacity = Capacity(gpu_ids=tuple(range(8)), slots=8)

    def plan(whole: bool) -> None:
        active = store.runs(states=[RunState.PENDING, RunState.PROCESSING], transitions="none")
        limits = {a.name: limits_of(a, settings) for a in store.accounts() if not a.disabled}
        if whole:
            plan_admissions(store.runs(states=[RunState.QUEUED], transitions="none"), active, limits, capacity)
        else:
            plan_from_heads(store.queue_heads, active, limits, capacity)

    heads = timed(lambda: plan(False), rounds)
    whole = timed(lambda: plan(True), max(3, rounds // 50))
    return heads, whole


def listing(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """``GET /v1/runs?limit=100`` from random places in account a0's runs, and the unpaged list."""
    headers = {"Authorization": f"Bearer {token('a0')}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        cursors, response = [None], http.get("/v1/runs", params={"limit": 100})
        while "next" in response.links:
            cursor = httpx.URL(response.links["next"]["url"]).params["cursor"]
            cursors.append(cursor)
            response = http.get("/v1/runs", params={"limit": 100, "cursor": cursor})
        page = timed(lambda: http.get("/v1/runs", params={"limit": 100, **_cursor(random.choice(cursors))}), rounds)
        whole = timed(lambda: http.get("/v1/runs"), 3)
    return page, whole


def _cursor(cursor: Optional[str]) -> dict:
    return {"cursor": cursor} if cursor else {}


def submits(url: str, account: str, rounds: int) -> list[float]:
    """``POST /v1/experiments`` of a 100-run sweep, ``rounds`` times."""
    import base64
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train.py", "print('hi')\n")
    manifest = {"name": "sweep", "gpus": 1, "framework": {"name": "custom", "command": "python3 train.py"},
                "hyperparameters": {"x": list(range(100))}, "search": {"algorithm": "grid"}}
    body = {"manifest": json.dumps(manifest), "code_zip_b64": base64.b64encode(buffer.getvalue()).decode()}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token(account)}"}, timeout=120) as http:
        return timed(lambda: http.post("/v1/experiments", json=body).raise_for_status(), rounds)


async def fan_out(url: str, account: str, subscribers: int, rounds: int) -> list[float]:
    """Seconds from a run's cancel to the last of ``subscribers`` receiving its event, per round."""
    headers = {"Authorization": f"Bearer {token(account)}"}
    connector = aiohttp.TCPConnector(limit=subscribers + 10)
    async with aiohttp.ClientSession(base_url=url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as http:
        async with http.get("/v1/runs", params={"state": "QUEUED", "limit": rounds}) as response:
            victims = [run["id"] for run in await response.json()]
        arrived: dict[str, list[float]] = {run_id: [] for run_id in victims}
        ready = asyncio.Semaphore(0)
        listeners = [asyncio.create_task(_listen(http, arrived, ready)) for _ in range(subscribers)]
        for _ in range(subscribers):
            await asyncio.wait_for(ready.acquire(), 60)
        lags = []
        for run_id in victims:
            started = time.monotonic()
            async with http.post(f"/v1/runs/{run_id}/cancel") as response:
                response.raise_for_status()
            while len(arrived[run_id]) < subscribers and time.monotonic() - started < 30:
                await asyncio.sleep(0.002)
            lags.append(max(arrived[run_id], default=30.0) - started)
        for listener in listeners:
            listener.cancel()
    return lags


async def _listen(http: aiohttp.ClientSession, arrived: dict[str, list[float]], ready: asyncio.Semaphore) -> None:
    """One subscriber: note when each watched run's HALTED event arrives."""
    async with http.get("/v1/events") as stream:
        ready.release()
        async for line in stream.content:
            if line.startswith(b"data:") and b'"HALTED"' in line:
                run_id = json.loads(line[5:])["run"]["id"]
                if run_id in arrived:
                    arrived[run_id].append(time.monotonic())


@contextmanager
def store_of(kind: str, tmp: Path) -> Iterator[tuple[Optional[str], Callable[[], RunStore]]]:
    """The database URL the backend is given (None: its own SQLite file) and how to open the store."""
    if kind == "sqlite":
        yield None, lambda: SqliteRunStore(tmp / "home" / "backend" / "wml.db")
        return
    from pgserver import PostgresServer, find_bindir
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed here (no initdb, pg_ctl): its figures are not measured")
    from wml_backend.rundb.postgres import PostgresRunStore
    server = PostgresServer(bindir).start()
    try:
        dsn = server.dsn()
        yield dsn, lambda: PostgresRunStore(dsn, tmp / "home" / "backend" / "secrets.key")
    finally:
        server.stop()


def measure(kind: str, rounds: int) -> None:
    """Every figure for one kind of store, each beside its baseline."""
    with tempfile.TemporaryDirectory() as folder, store_of(kind, Path(folder)) as (database, open_store):
        home = Path(folder) / "home"
        flags = ["--database", database] if database else []
        backend = BackendProcess(home, gpus=0, flags=flags).start()  # no GPUs: the runs stay queued
        store = open_store()
        seeded = seed(store)
        print(f"[{kind}] seeded {ACCOUNTS * EXPERIMENTS_PER_ACCOUNT * RUNS_PER_EXPERIMENT:,} runs "
              f"({ACCOUNTS * QUEUED_EXPERIMENTS * RUNS_PER_EXPERIMENT:,} queued, {ACCOUNTS} accounts) "
              f"in {seeded:.1f} s")
        try:
            empty_submit = _fresh_submits(kind, Path(folder), rounds // 10)
            heads, whole = admission(store, rounds)
            report(kind, "admission pass", heads, whole, "the whole queue (old path)")
            page, unpaged = listing(backend.url, rounds)
            report(kind, "GET /v1/runs?limit=100", page, unpaged, "unpaged list of the same 1,000 runs (old path)")
            report(kind, "submit 100 runs", submits(backend.url, "a1", rounds // 10), empty_submit,
                   "the same on an empty store")
            many = asyncio.run(fan_out(backend.url, "a2", SUBSCRIBERS, 10))
            one = asyncio.run(fan_out(backend.url, "a3", 1, 10))
            report(kind, f"event fan-out to {SUBSCRIBERS}", many, one, "to one subscriber")
        finally:
            store.close()
            backend.close()


def _fresh_submits(kind: str, folder: Path, rounds: int) -> list[float]:
    """Submit latencies against an empty store of the same kind (the submit baseline)."""
    with store_of(kind, folder / "empty") as (database, open_store):
        backend = BackendProcess(folder / "empty" / "home", gpus=0,
                                 flags=["--database", database] if database else []).start()
        try:
            store = open_store()
            store.create_account(Account(name="a99", gpu_quota=8), token_hash(token("a99")))
            store.close()
            return submits(backend.url, "a99", rounds)
        finally:
            backend.close()


def report(kind: str, what: str, now: list[float], before: list[float], baseline: str) -> None:
    """One figure's p99 beside its baseline's, and their ratio."""
    p99, base = percentile(now, 99), percentile(before, 99)
    print(f"[{kind}] {what:26} p99 {1000 * p99:9.1f} ms (n={len(now)})   baseline, {baseline}: "
          f"p99 {1000 * base:9.1f} ms (n={len(before)})   ratio {p99 / base:.3f}")


def main() -> None:
    """Measure each store asked for."""
    global ACCOUNTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=ACCOUNTS,
                        help="accounts seeded, each with 1,000 runs of which 200 queued (at least 4)")
    args = parser.parse_args()
    ACCOUNTS = max(args.accounts, 4)
    print("issue 15's figures for the old paths at 20,000 queued: list 8.6 s, one admission pass 0.74 s")
    print(f"this machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    for kind in args.stores.split(","):
        try:
            measure(kind, args.rounds)
        except RuntimeError as exc:
            print(f"[{kind}] not measured: {exc}")


if __name__ == "__main__":
    main()
