"""The agent standing in for cluster DNS, for the pods of headless Services only.

A pod with a ``hostname`` and a ``subdomain`` (the pods of an Indexed Job, whose headless
Service is named by the subdomain) is known to cluster DNS as
``<hostname>.<subdomain>.<namespace>.svc.cluster.local``, and through the DNS search path as
``<hostname>.<subdomain>[.<namespace>[.svc]]``. There is no DNS server here: instead each such
pod's hosts file (its ``/etc/hosts``, bind-mounted in its mount namespace) lists, after the
kubelet's own lines, those names of every running pod of this agent with the same namespace and
subdomain, at 127.0.0.1 (every pod's IP here). A file is rewritten in place when a pod of its
group comes or goes: the bind mount follows the file, and a process resolving a peer that
started later finds it then (``torch.distributed`` retries a rendezvous address that does not
resolve yet).

Limits: only the pods of this agent's nodes are known; the Service itself is not looked up (a
subdomain is taken to be a headless Service that selects the group's pods); where ``unshare``
cannot give a container a mount namespace there is no per-pod ``/etc/hosts``, and the names
do not resolve at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .podenv import POD_IP


@dataclass
class Member:
    """A running pod of a group: its hostname, its hosts file, and that file's own lines."""

    hostname: str
    hosts_file: Path
    own_lines: str


def service_names(hostname: str, subdomain: str, namespace: str) -> list[str]:
    """The names cluster DNS gives a pod of a headless Service, longest first."""
    full = f"{hostname}.{subdomain}.{namespace}.svc.cluster.local"
    return [full, f"{hostname}.{subdomain}.{namespace}.svc", f"{hostname}.{subdomain}.{namespace}",
            f"{hostname}.{subdomain}"]


class HeadlessNames:
    """The groups of pods (namespace, subdomain) of one agent, and their hosts files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], dict[str, Member]] = {}

    def join(self, namespace: str, subdomain: str, uid: str, member: Member) -> None:
        """A pod of the group starts (or its file was written again): every member's file now
        names it, and its own file names every member."""
        with self._lock:
            group = self._groups.setdefault((namespace, subdomain), {})
            group[uid] = member
            self._rewrite(namespace, subdomain, group)

    def leave(self, namespace: str, subdomain: str, uid: str) -> None:
        """A pod of the group is over: the others' files no longer name it."""
        with self._lock:
            group = self._groups.get((namespace, subdomain), {})
            if group.pop(uid, None) is None:
                return
            if group:
                self._rewrite(namespace, subdomain, group)
            else:
                del self._groups[(namespace, subdomain)]

    @staticmethod
    def _rewrite(namespace: str, subdomain: str, group: dict[str, Member]) -> None:
        peers = [f"# Pods of the headless Service {subdomain} (the node agent stands in for cluster DNS)."]
        peers += [f"{POD_IP}\t{' '.join(service_names(m.hostname, subdomain, namespace))}"
                  for m in sorted(group.values(), key=lambda m: m.hostname)]
        for member in group.values():
            try:  # in place: the container's bind mount is of this file, not of its name
                member.hosts_file.write_text(member.own_lines + "\n".join(peers) + "\n")
            except OSError:
                pass  # the pod's directory is gone: it is leaving
