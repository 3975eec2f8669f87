"""Whether a replica is alive (``/livez``) and whether it should get traffic (``/readyz``).

A load balancer or Kubernetes asks each replica both. Alive means the server answers at all: the
answer touches neither the run store nor the worker threads that serve requests (every one may be
busy with a slow request, which is no reason to kill the replica). Ready means the replica can
serve a request that reads the run store now.
"""

from __future__ import annotations

import logging
from typing import Optional

from wml_backend.rundb.sql import SCHEMA_VERSION

log = logging.getLogger("wml_backend")


def not_ready(store) -> Optional[str]:
    """Why this replica should get no traffic now, or None. The run store must answer, with a
    schema this version knows: one a newer version has upgraded is for newer replicas (this one
    is about to be replaced)."""
    try:
        version = store.schema_version()
    except Exception as exc:  # any failure to read the database means: send requests elsewhere
        log.warning("not ready: the run store does not answer: %s", " ".join(str(exc).split()))
        return "the run store does not answer"  # the error itself may name the database: it stays in the log
    if version > SCHEMA_VERSION:
        return f"the database's schema is version {version}, newer than this replica's {SCHEMA_VERSION}"
    return None
