"""Talking to the Kubernetes API: connecting, and calls whose failures read as one line.

``connect`` finds the cluster (kubeconfig, or the in-cluster config inside a pod). ``call`` makes
a request whose refusal becomes a ``ClusterError``; ``delete_quietly`` makes a deletion that may
find nothing left and only logs other failures.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

from wml_core.errors import InvalidInput, WmlError

log = logging.getLogger("wml_backend.kubernetes")

#: Where a pod finds its own namespace when the backend runs in the cluster.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: Seconds to connect to the API server, and to get the answer of one call (create, delete, read).
CONNECT_TIMEOUT_S, CALL_TIMEOUT_S = 10, 30


class ClusterError(WmlError):
    """The Kubernetes API refused or failed a request."""

    code = "kubernetes"
    http_status = 502


def connect(context: Optional[str] = None) -> tuple[Any, str]:
    """An API client and the default namespace: kubeconfig, or in-cluster config inside a pod.

    Its connections send TCP keepalives, so that a watch on a connection that died is noticed.
    """
    from kubernetes import client, config
    in_pod = os.environ.get("KUBERNETES_SERVICE_HOST") and not context and not os.environ.get("KUBECONFIG")
    configuration = client.Configuration()
    configuration.keep_alive = True
    try:
        if in_pod:
            config.load_incluster_config(client_configuration=configuration)
            with open(SERVICE_ACCOUNT_NAMESPACE) as f:
                return client.ApiClient(configuration), f.read().strip()
        files = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")  # read now, not at import
        contexts, active = config.list_kube_config_contexts(config_file=files)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise InvalidInput(f"WML_K8S_CONTEXT: no context {context!r} in the kubeconfig; it has: {names}")
        namespace = chosen.get("context", {}).get("namespace") or "default"
        config.load_kube_config(config_file=files, context=chosen["name"], client_configuration=configuration,
                                persist_config=False)
        return client.ApiClient(configuration), namespace
    except (config.ConfigException, OSError) as exc:
        raise InvalidInput(f"kubernetes: no usable configuration ({' '.join(str(exc).split())}); "
                           "set KUBECONFIG (and WML_K8S_CONTEXT) or run the backend in a pod") from None


def call(method, *args, **kwargs) -> dict:
    """Call the API; a refusal becomes a one-line ``ClusterError``."""
    try:
        return json.loads(method(*args, _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, CALL_TIMEOUT_S),
                                 **kwargs).data)
    except Exception as exc:
        raise ClusterError(f"kubernetes: {method.__name__} failed: {why(exc)}") from None


def delete_quietly(method, *args, **kwargs) -> None:
    """A deletion that may find nothing left to delete."""
    try:
        method(*args, _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, CALL_TIMEOUT_S), **kwargs)
    except Exception as exc:
        if getattr(exc, "status", None) != 404:
            log.warning("kubernetes: %s failed: %s", method.__name__, why(exc))


def why(exc: Exception) -> str:
    """The API's own message for a failed call, on one line."""
    body = getattr(exc, "body", None)
    try:
        status = json.loads(body)
        return f"{status.get('code')} {status.get('reason')}: {status.get('message')}"
    except (TypeError, ValueError):
        return " ".join(str(exc).split()) or type(exc).__name__
