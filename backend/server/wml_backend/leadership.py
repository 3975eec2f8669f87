"""One leader among the backend replicas that share a run store.

Every replica serves the whole API; the work that must happen once (admission passes, watching
runners, timers, recovery after a takeover) is the leader's. A replica says it is alive every
``HEARTBEAT_S`` and takes or renews the leader's lease for ``LEASE_S`` in the same write
(``RunStore.heartbeat``): a leader killed outright is replaced at another replica's next
heartbeat (its database session is gone), one that hangs or loses the database within ``LEASE_S``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Optional

from wml_backend import __version__
from wml_backend.rundb import RunStore
from wml_backend.rundb.base import Replica

log = logging.getLogger("wml_backend")

#: Seconds a leader's lease lasts without renewal.
LEASE_S = 5.0
#: Seconds between two heartbeats of a replica (each renews a leader's lease).
HEARTBEAT_S = 1.0


def this_replica(url: str) -> Replica:
    """A new identity for this process, serving at ``url``."""
    return Replica(id=uuid.uuid4().hex[:12], url=url, host=socket.gethostname(), pid=os.getpid(),
                   version=__version__)


class Leadership:
    """Heartbeats of one replica; calls ``on_lead`` when it becomes the leader, ``on_follow`` when
    it stops being one (both from the heartbeat thread, after the first from ``start``)."""

    def __init__(self, store: RunStore, replica: Replica, on_lead: Callable[[], None],
                 on_follow: Callable[[], None]):
        self.store, self.replica = store, replica
        self.on_lead, self.on_follow = on_lead, on_follow
        self.leading = False
        self._until = 0.0  # monotonic time until which this replica's lease surely holds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Say this replica is here (leading at once if nobody does), then keep saying it."""
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="wml-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeats and leave: another replica takes the lease at its next heartbeat."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=HEARTBEAT_S * 5)
        self._become(False)
        try:
            self.store.leave(self.replica.id)
        except Exception:  # the database is gone: the lease expires by itself
            log.warning("could not leave the replica set", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.beat()

    def beat(self) -> None:
        """One heartbeat; a leader that cannot renew leads until its lease would have expired."""
        sent = time.monotonic()
        try:
            leads = self.store.heartbeat(self.replica, LEASE_S)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
            leads = self.leading and time.monotonic() < self._until
        else:
            if leads:  # the lease runs from when it was asked for, less one heartbeat of margin
                self._until = sent + LEASE_S - HEARTBEAT_S
        self._become(leads)

    def _become(self, leads: bool) -> None:
        if leads == self.leading:
            return
        self.leading = leads
        if leads:
            log.info("replica %s leads", self.replica.id, extra={"replica": self.replica.id})
            self.on_lead()
        else:
            log.warning("replica %s no longer leads", self.replica.id, extra={"replica": self.replica.id})
            self.on_follow()
