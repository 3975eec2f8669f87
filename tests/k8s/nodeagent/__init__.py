"""The test cluster's node agent: Nodes that run their pods as processes of this host.

``scripts/kube-up.sh`` starts one (``python -m nodeagent --state DIR --nodes 2 --gpus 2``); more
can be started later against the same state dir, e.g. 100 pretend nodes for a scale test
(``--nodes 0 --pretend-nodes 100 --pretend-prefix big- --pretend-run-s 5``); kube-down.sh stops
them all (each records ``pids/nodeagent-<pid>.pid``).

What it does, as a kubelet would, through the API only:

* registers each Node (capacity and allocatable: ``cpu``, ``memory``, ``pods``,
  ``ephemeral-storage``, ``nvidia.com/gpu``; labels and taints as configured) and keeps it
  Ready: a Lease in ``kube-node-lease`` renewed every 10 s, status with heartbeats;
* authenticates as each node (``system:node:<name>``, group ``system:nodes``), so the Node
  authorizer and NodeRestriction judge it as they judge kubelets: it lists only its own pods and
  reads only the Secrets, ConfigMaps and claims its pods use;
* watches the pods bound to each node (``spec.nodeName``), resuming after errors and listing
  again after 410 Gone;
* runs each pod's containers (see ``processes``): ``command`` + ``args``, ``workingDir``, the env
  (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``, ``resourceFieldRef``,
  ``envFrom``), volumes (see ``podenv``), init containers, restart policies;
* reports real pod status: Pending (``ContainerCreating``, ``CreateContainerConfigError``,
  ``ErrImagePull``/``ImagePullBackOff``), Running (``state.running``, pod IP, Ready condition),
  then ``terminated`` with the real exit code and ``Completed``/``Error``/``OOMKilled``, phase
  Succeeded or Failed (``DeadlineExceeded`` past ``activeDeadlineSeconds``);
* honours deletion (a ``deletionTimestamp``: a pod deleted, evicted through the eviction API, or
  removed by a controller): SIGTERM to the container's main process, SIGKILL after the pod's
  ``deletionGracePeriodSeconds``, a final status, then the pod object is deleted with grace 0;
* serves container logs to the API server (``kubectl logs``, ``pods/log``), see ``logserver``;
* pretend nodes (``--pretend-nodes``) run nothing: a pod there is Running at once and stays so,
  or ends Succeeded after ``--pretend-run-s`` (per pod: the ``nodeagent.wml.dev/run-seconds``
  and ``nodeagent.wml.dev/exit-code`` annotations). Every node is labelled
  ``nodeagent.wml.dev/mode``: ``processes`` or ``pretend`` (a node selector for scale tests).

Limits, by design (this is a test double for a node, not a container runtime):

* **No image is pulled**: a container's ``command`` runs on this host, with the project's venv
  first in ``PATH`` (``python3`` is the venv's interpreter, so ``python3 -m wml_runner`` runs the
  runner as installed there). A container without ``command`` cannot run (an image's
  entrypoint is unknown). An image from a registry under ``.invalid`` fails to pull.
* **Some isolation**: a container's process runs as its ``securityContext`` says (user, groups,
  capabilities, ``no_new_privs``, ``runAsNonRoot`` refused with the kubelet's error; see
  ``security``), and a non-root one sees of the folders it cannot pass only its pod's folder,
  mounts and the interpreter; with no user namespace, seccomp or AppArmor. Pods share this host's
  network (each pod has a loopback address of its own, 127.x.y.z, as its pod IP: pods that bind
  it do not collide; one that binds 0.0.0.0 takes the port on every address), file system and users.
  Where ``unshare`` allows it (root, or user namespaces) each container gets PID, mount and UTS
  namespaces: it is PID 1 (a SIGTERM it does not handle is ignored, as in a container), has its
  own ``/proc``, the pod's hostname and the pod's ``/etc/hosts`` (its own name, under its
  ``subdomain`` too, and its ``hostAliases``).
* **No cluster DNS.** The agent stands in for it for headless Services only (see ``dns``): a
  pod with a ``subdomain`` resolves ``<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]`` of the
  agent's running pods with that subdomain (an Indexed Job's learners find each other) to
  127.0.0.1, through its ``/etc/hosts`` (so only where ``unshare`` works). Service names and
  other pods' names do not resolve. As every pod listens on 127.0.0.1, two multi-learner runs
  at once collide on their rendezvous port (29500): the second one's learners fail to bind it.
* Volumes are directories of the state dir, and paths under a ``mountPath`` in ``workingDir``,
  ``command``, ``args`` and env values are rewritten to them (see ``podenv``).
* No probes (a running container is ready), no CPU limits (memory limits are sampled), no
  ``exec``/``attach``/``port-forward``, no Service proxy (cluster IPs lead nowhere; pods reach
  the API server at 127.0.0.1, ``KUBERNETES_SERVICE_HOST``); ServiceAccount tokens
  in projected volumes are not refreshed. GPUs are numbers: ``NVIDIA_VISIBLE_DEVICES`` names
  the node's GPU indices allotted to the container; there is no device.
"""
