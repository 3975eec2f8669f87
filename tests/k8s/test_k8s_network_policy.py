"""Who may connect to a run's pods, read from the NetworkPolicies the API server holds.

The test cluster cannot enforce a NetworkPolicy (its pods share this host's loopback): these
tests prove that the policies are accepted by the real API server and select the pods they mean
to, by evaluating each policy's selectors with the API server's own label selection over the
pods the Job controller made. A run of several learners gets a policy of its own (owned by its
Job); with the namespace's (``backend/deploy/networkpolicy.yaml``), a run pod accepts
connections from its own run's pods and the backend only, and reaches no other run's pod.
"""

from __future__ import annotations

import dataclasses
import json

import kubernetes_validate
import pytest
from wml_backend.executors.k8s_objects import BACKEND_POD_LABELS, network_policy_object, run_objects
from wml_backend.executors.k8s_options import load_options
from test_k8s_executor import Recorder, launch, pools, running_pods, wait_for  # noqa: F401 (pools: a fixture)
from test_k8s_objects import SCHEMA_VERSION

pytestmark = pytest.mark.nodeagent


def selected(ns, selector: dict) -> set[str]:
    """The pods of ``ns`` that a policy's ``podSelector`` selects, as the API server selects them."""
    from kubernetes import client
    assert not selector.get("matchExpressions"), "only matchLabels here"
    labels = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
    listed = client.CoreV1Api(ns.cluster.api()).list_namespaced_pod(ns.name, label_selector=labels,
                                                                     _preload_content=False)
    return {p["metadata"]["name"] for p in json.loads(listed.data)["items"]}


def policies(ns) -> list[dict]:
    """The NetworkPolicies of ``ns``, as the API server holds them."""
    from kubernetes import client
    listed = client.NetworkingV1Api(ns.cluster.api()).list_namespaced_network_policy(ns.name, _preload_content=False)
    return json.loads(listed.data)["items"]


def peers(ns, rules: list[dict], key: str) -> set[str]:
    """The pods of ``ns`` that ``rules`` (``ingress`` ``from``, or ``egress`` ``to``) allow."""
    return {name for rule in rules for peer in rule[key] if "podSelector" in peer and "namespaceSelector" not in peer
            for name in selected(ns, peer["podSelector"])}


def allowed(ns, pod: str, direction: str) -> set[str]:
    """The pods of ``ns`` that ``pod`` may accept connections from (``ingress``) or make them
    to (``egress``): the union over every policy that selects it (pods no policy selects: all)."""
    key = "from" if direction == "ingress" else "to"
    chosen = [p for p in policies(ns) if pod in selected(ns, p["spec"]["podSelector"])
              and direction.capitalize() in p["spec"]["policyTypes"]]
    assert chosen, f"{pod}: no policy selects it"
    return set().union(*(peers(ns, p["spec"].get(direction) or [], key) for p in chosen))


def test_a_run_policy_is_valid_and_only_for_several_learners():
    options = load_options({}, "wml")
    one = launch("np-01", "pool")
    assert [o["kind"] for o in run_objects(one, options, "wml-x")] == ["Job", "Secret"], "one learner: no write more"
    policy = network_policy_object(dataclasses.replace(one, learners=2), options, "wml-x", job_uid="u")
    kubernetes_validate.validate(policy, SCHEMA_VERSION, strict=True)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "Job"


def test_runs_accept_connections_from_their_own_learners_and_the_backend_only(kube_ns, monkeypatch, pools):
    recorder = Recorder(monkeypatch, kube_ns)
    try:
        two = recorder.executor.start(launch("np2-01", pools.hold, gpus=0, learners=2))
        one = recorder.executor.start(launch("np1-01", pools.hold, gpus=0, account="bob"))
        wait_for(lambda: len(running_pods(kube_ns)) == 3)
        learners = {p["metadata"]["name"] for p in running_pods(kube_ns) if p["metadata"]["labels"]["job-name"] == two["job"]}
        [single] = {p["metadata"]["name"] for p in running_pods(kube_ns)} - learners
        assert len(learners) == 2
        [own] = [p for p in policies(kube_ns) if p["metadata"]["name"] == two["job"]]
        assert own["metadata"]["ownerReferences"][0]["uid"] == two["uid"]
        assert selected(kube_ns, own["spec"]["podSelector"]) == learners
        assert not selected(kube_ns, {"matchLabels": BACKEND_POD_LABELS}) & (learners | {single})
        for pod in learners:
            assert allowed(kube_ns, pod, "ingress") == learners, "its peers (and the backend), no other run"
            assert allowed(kube_ns, pod, "egress") == learners
        assert allowed(kube_ns, single, "ingress") == set(), "the backend only"
        assert allowed(kube_ns, single, "egress") == set()
        assert kube_ns.writes() == {"create jobs": 2, "create secrets": 2, "create services": 1,
                                    "create networkpolicies": 1}
        recorder.executor.cancel("np2-01", two)  # the policy goes with its Job
        wait_for(lambda: [p["metadata"]["name"] for p in policies(kube_ns)] == ["wml-runs"])
        recorder.executor.cancel("np1-01", one)
    finally:
        recorder.executor.close()
