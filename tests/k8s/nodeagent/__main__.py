"""python -m nodeagent --state DIR [--nodes N] [--pretend-nodes M] ...: see nodeagent/__init__.py."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from .agent import Agent, read_server
from .node import NodeConfig


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item.strip())


def _taints(text: str) -> list[dict]:
    """``key=value:Effect,key:Effect`` as taints."""
    taints = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        key_value, _, effect = item.rpartition(":")
        key, _, value = key_value.partition("=")
        taints.append({"key": key, "effect": effect, **({"value": value} if value else {})})
    return taints


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    p.add_argument("--state", type=Path, default=Path(os.environ.get("WML_KUBE_STATE", "")),
                   help="the test cluster's state dir (its PKI, kubeconfigs)")
    p.add_argument("--server", help="API server URL (default: from the state dir's admin kubeconfig)")
    p.add_argument("--version", default=os.environ.get("WML_KUBE_VERSION", "v1.35.4"),
                   help="kubelet version the nodes report")
    p.add_argument("--nodes", type=int, default=1, help="nodes whose pods run as local processes")
    p.add_argument("--prefix", default="node-", help="their names: PREFIX1, PREFIX2...")
    p.add_argument("--pretend-nodes", type=int, default=0, help="nodes that run nothing (scale tests)")
    p.add_argument("--pretend-prefix", default="pretend-")
    p.add_argument("--pretend-run-s", type=float, help="a pretend pod succeeds after this long (default: never)")
    p.add_argument("--gpus", type=int, default=2, help="nvidia.com/gpu per node")
    p.add_argument("--cpus", default="32")
    p.add_argument("--memory", default="128Gi")
    p.add_argument("--labels", default="", help="k=v,k=v")
    p.add_argument("--taints", default="", help="k=v:Effect,...")
    p.add_argument("--port", type=int, default=0, help="port of the log endpoint (0: any free one)")
    p.add_argument("--no-isolation", action="store_true", help="no PID namespaces: process groups")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        os.setsid()  # a process group of its own: kube-down.sh stops it (and only it) by pid
    except OSError:
        pass
    state = args.state.resolve()
    server = args.server or read_server(state)
    if not server:
        print(f"nodeagent: no --server and no kubeconfig in {state}", file=sys.stderr)
        return 2
    pidfile = state / "pids" / f"nodeagent-{os.getpid()}.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{os.getpid()}\n")
    agent = Agent(state, server, args.version, args.port, isolate=not args.no_isolation)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopped.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopped.set())
    base = dict(gpus=args.gpus, cpus=args.cpus, memory=args.memory, labels=_pairs(args.labels),
                taints=_taints(args.taints))
    try:
        agent.add_nodes([f"{args.prefix}{i}" for i in range(1, args.nodes + 1)], NodeConfig(**base))
        agent.add_nodes([f"{args.pretend_prefix}{i}" for i in range(1, args.pretend_nodes + 1)],
                        NodeConfig(**base, pretend=True, pretend_run_s=args.pretend_run_s))
        agent.run()
    finally:
        agent.stop()
        pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
