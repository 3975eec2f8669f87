"""High availability, the long version of tests/test_ha.py: three backend replicas on one
PostgreSQL behind one address, a 60-run sweep, the leader killed with SIGKILL five times and a
follower once. Checks that every run ended once, ran once and was billed once, and that every
event stream got every state change in order; prints the takeover times and the event latency.

    python bench/ha.py [--runs 60] [--leader-kills 5] [--gap 4] [--replicas 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ha_campaign import campaign, check, freeze_leader, summary, write_sweep  # noqa: E402
from ha_cluster import Cluster  # noqa: E402
from pgserver import PostgresServer, find_bindir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--leader-kills", type=int, default=5)
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between kills (±30%%)")
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        print("bench/ha.py needs the PostgreSQL server binaries (apt-get install postgresql)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="wml-ha-"))
    server = PostgresServer(bindir).start()
    try:
        cluster = Cluster(root, server.dsn(), count=args.replicas).start()
        try:
            return report(cluster, root, args)
        finally:
            cluster.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(cluster: Cluster, root: Path, args: argparse.Namespace) -> int:
    """Run the campaign, check it, print what it measured."""
    manifest, model = write_sweep(root / "sweep", runs=args.runs, steps=4, sleep=0.5)
    started = time.monotonic()
    found = campaign(cluster, manifest, model, leader_kills=args.leader_kills, gap_s=args.gap)
    makespan = time.monotonic() - started
    seen = check(cluster, found)  # raises on any broken invariant
    reconnected = sum(len(r.replicas_used) > 1 for r in found.recorders)
    print(f"{args.runs} runs on {args.replicas} replicas, kills: {', '.join(found.kills)}; makespan {makespan:.1f} s")
    print(f"every run ended once, ran once and was billed once; {len(found.recorders)} event streams "
          f"({reconnected} reconnected to another replica) got every state change in order")
    print(f"leader takeover after SIGKILL: {summary(found.takeovers)} "
          f"({', '.join(f'{t:.2f}' for t in found.takeovers)})")
    print(f"event latency (transition to client): {summary(seen['latencies'])}")
    print(f"leader takeover after SIGSTOP (its lease expires): {freeze_leader(cluster):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
