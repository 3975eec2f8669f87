"""The test cluster's node agent honours a pod's ``securityContext`` as a container runtime would
for a process (``nodeagent/security.py``): its user, groups and capabilities, ``no_new_privs``,
``runAsNonRoot``, ``fsGroup`` on its volumes, and a disk that shows a non-root pod only its own.
"""

from __future__ import annotations

import json
import os

import pytest
from kubernetes import client
from test_cluster_smoke import RESTRICTED, api, ns, wait_for  # noqa: F401 (api, ns: fixtures)

pytestmark = pytest.mark.nodeagent

#: What a pod reports of itself: who it is, its capabilities, what it may write and read.
REPORT = r'''
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None
open("/job/written", "w").write("x")
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "caps": [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")],
                  "no_new_privs": status["NoNewPrivs"].strip(), "pids": sorted(int(p) for p in os.listdir("/proc")
                                                                             if p.isdigit()),
                  "work": oct(os.stat("/job").st_mode), "work_gid": os.stat("/job").st_gid,
                  "state": listing(os.environ["STATE"]), "pki": listing(os.environ["STATE"] + "/pki")}))
'''


def pod_with(name: str, pod_security: dict, container_security: dict, state: str) -> dict:
    """A pod that runs ``REPORT`` with a work volume at /job."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "securityContext": pod_security, "volumes": [{"name": "work", "emptyDir": {}}],
        "containers": [{"name": "main", "image": "python:3.11-slim", "command": ["python3", "-c", REPORT],
                        "env": [{"name": "STATE", "value": state}], "securityContext": container_security,
                        "volumeMounts": [{"name": "work", "mountPath": "/job"}]}]}}


def test_a_restricted_pod_runs_as_its_user_with_no_capability_and_sees_only_its_own(api, ns, kube_cluster):
    if os.geteuid() != 0:
        pytest.skip("the agent changes users only as root")
    core = client.CoreV1Api(api)
    state = str(kube_cluster.state)
    pod = pod_with("restricted", {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "runAsNonRoot": True},
                   {k: v for k, v in RESTRICTED.items() if k not in ("runAsNonRoot", "runAsUser")}, state)
    core.create_namespaced_pod(ns, pod)
    wait_for("the pod to end", lambda: core.read_namespaced_pod(
        "restricted", ns).status.phase in ("Succeeded", "Failed"))
    said = json.loads(core.read_namespaced_pod_log("restricted", ns).strip().splitlines()[-1])
    assert (said["uid"], said["gid"], said["groups"]) == (1000, 3000, [2000])
    assert said["caps"] == ["0000000000000000"] * 4 and said["no_new_privs"] == "1"
    assert said["pids"] == [1], "PID 1 of a PID namespace of its own, alone"
    assert said["work"] == "0o42777" and said["work_gid"] == 2000, "emptyDir 0777, fsGroup's, setgid"
    assert said["state"] == ["agent"] and said["pki"] is None, "of the cluster's state, only its pod's folder"


def refusal(core: client.CoreV1Api, ns: str, name: str) -> str:
    """The message of the pod's container once it waits in ``CreateContainerConfigError``."""
    def waiting():
        statuses = core.read_namespaced_pod(name, ns).status.container_statuses or []
        state = statuses[0].state.waiting if statuses else None
        return state.message if state and state.reason == "CreateContainerConfigError" else None
    return wait_for("the kubelet's refusal", waiting)


def test_run_as_non_root_refuses_a_container_that_would_run_as_root(api, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, pod_with("rooted", {"runAsNonRoot": True}, {}, "/"))
    uid = core.read_namespaced_pod("rooted", ns).metadata.uid
    assert refusal(core, ns, "rooted") == \
        f'container has runAsNonRoot and image will run as root (pod: "rooted_{ns}({uid})", container: main)'
    core.create_namespaced_pod(ns, pod_with("zero", {"runAsNonRoot": True, "runAsUser": 0}, {}, "/"))
    assert refusal(core, ns, "zero").startswith("container's runAsUser breaks non-root policy (pod: ")
