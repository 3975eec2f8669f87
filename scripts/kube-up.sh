#!/usr/bin/env bash
# Starts the test cluster on loopback: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, Kueue's manager and the node agent (tests/k8s/nodeagent), at the releases pinned
# in scripts/kube/ (built once by scripts/kube/build.sh, cached under ~/.cache keyed by version).
#
#   eval "$(bash scripts/kube-up.sh)"; kubectl get nodes
#
# Stdout is only `export NAME=value` lines (KUBECONFIG, PATH with kubectl first, WML_KUBE_*);
# progress goes to stderr. State (PKI, etcd data, logs, pids) lives in $WML_KUBE_STATE (default
# ~/.cache/wml-kube/state) and is wiped at each start; scripts/kube-down.sh stops everything.
#
# Settings (environment):
#   WML_KUBE_NODES=2             nodes whose pods run as local processes
#   WML_KUBE_GPUS_PER_NODE=2     nvidia.com/gpu capacity of each node
#   WML_KUBE_PRETEND_NODES=0     extra nodes that run nothing (scale tests): a pod there is
#                                Running, and Succeeded after WML_KUBE_PRETEND_RUN_S (if set)
#   WML_KUBE_NODE_LABELS         extra node labels, k=v,k=v (e.g. nvidia.com/gpu.product=...)
#   WML_KUBE_NODE_TAINTS         node taints, k=v:Effect,... (e.g. nvidia.com/gpu=present:NoSchedule)
#   WML_KUBE_CPUS_PER_NODE=32, WML_KUBE_MEMORY_PER_NODE=128Gi   advertised capacity
#   WML_KUBE_ETCD_FSYNC=0        1: etcd syncs every write to disk (off: the state is throwaway)
#   WML_KUBE_KUEUE_LOG_LEVEL=info  Kueue's log level (2: every admission decision)
#   WML_KUBE_<NAME>_PORT         fixed ports (API, ETCD, ETCD_PEER, CM, SCHED, KUEUE_WEBHOOK,
#                                KUEUE_HEALTH, AGENT); by default free ports are picked
set -euo pipefail
. "$(dirname "$0")/kube/common.sh"
. "$kube_dir/pki.sh"

SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1  # the `kubernetes` Service: the first address of SERVICE_CIDR
pki=$WML_KUBE_STATE/pki
kubeconfigs=$WML_KUBE_STATE/kubeconfig
started=$SECONDS

# free_ports N: N distinct free TCP ports of 127.0.0.1, held open together while picked.
free_ports() {
  "$python" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

pick_ports() {
  local p
  read -r -a p <<<"$(free_ports 8)"
  api_port=${WML_KUBE_API_PORT:-${p[0]}}
  etcd_port=${WML_KUBE_ETCD_PORT:-${p[1]}}
  etcd_peer_port=${WML_KUBE_ETCD_PEER_PORT:-${p[2]}}
  cm_port=${WML_KUBE_CM_PORT:-${p[3]}}
  sched_port=${WML_KUBE_SCHED_PORT:-${p[4]}}
  webhook_port=${WML_KUBE_KUEUE_WEBHOOK_PORT:-${p[5]}}
  kueue_health_port=${WML_KUBE_KUEUE_HEALTH_PORT:-${p[6]}}
  agent_port=${WML_KUBE_AGENT_PORT:-${p[7]}}
  api_url=https://127.0.0.1:$api_port
}

# kubeconfig NAME CERT: a kubeconfig for the client certificate CERT, certificates embedded.
kubeconfig() {
  local name=$1 cert=$2 b64="base64 -w0"
  mkdir -p "$kubeconfigs"
  cat >"$kubeconfigs/$name" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wml-kube
  cluster:
    server: $api_url
    certificate-authority-data: $($b64 <"$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $($b64 <"$pki/$cert.crt")
    client-key-data: $($b64 <"$pki/$cert.key")
contexts:
- name: wml-kube
  context: {cluster: wml-kube, user: $name}
current-context: wml-kube
EOF
  chmod 600 "$kubeconfigs/$name"
}

# wait_for WHAT SECONDS CMD...: retry CMD until it succeeds; fail after SECONDS with WHAT's log.
wait_for() {
  local what=$1 limit=$2 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if ! proc_alive "$what"; then
      tail -n 20 "$logs_dir/$what.log" >&2 || true
      die "$what exited (log: $logs_dir/$what.log)"
    elif [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$logs_dir/$what.log" >&2 || true
      die "$what did not become ready within ${limit}s (log: $logs_dir/$what.log)"
    fi
    sleep 0.2
  done
}

https_ok() {  # https_ok URL [CERT]: a 2xx answer from URL, as CERT (a client certificate) if given
  curl -sf --max-time 2 --cacert "$pki/ca.crt" ${2:+--cert "$pki/$2.crt" --key "$pki/$2.key"} "$1"
}

start_etcd() {
  local fsync=()
  # The cluster's state is thrown away at each start: waiting for the disk buys nothing.
  [ "${WML_KUBE_ETCD_FSYNC:-0}" = 1 ] || fsync=(--unsafe-no-fsync)
  start_proc etcd "$bin/etcd" --name wml --data-dir "$WML_KUBE_STATE/etcd" --log-level warn \
    --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
    --listen-peer-urls "https://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "https://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "wml=https://127.0.0.1:$etcd_peer_port" \
    --cert-file "$pki/etcd-server.crt" --key-file "$pki/etcd-server.key" \
    --client-cert-auth --trusted-ca-file "$pki/ca.crt" \
    --peer-cert-file "$pki/etcd-server.crt" --peer-key-file "$pki/etcd-server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$pki/ca.crt" "${fsync[@]}"
  wait_for etcd 60 https_ok "https://127.0.0.1:$etcd_port/health" apiserver-etcd-client
}

# The audit policy, at Metadata level to $logs_dir/audit.log: every request of a ServiceAccount
# outside kube-system (a backend under test runs as the ServiceAccount of backend/deploy), and the
# nodes' writes of pod status. Tests and bench/k8s_submit.py read it: a backend's API writes, the
# calls its Role refused, and when (to the microsecond) a pod's status changed.
audit_policy() {
  cat >"$WML_KUBE_STATE/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: Metadata
    userGroups: ["system:nodes"]
    verbs: ["patch", "update"]
    resources: [{group: "", resources: ["pods/status"]}]
  - level: None
EOF
}

start_apiserver() {
  # As a production cluster: client certificates and ServiceAccount tokens, Node+RBAC
  # authorization, NodeRestriction besides the default admission plugins (PodSecurity among
  # them). The `kubernetes` Service gets no endpoints: its only address is loopback, which
  # Endpoints may not hold (and pods here reach the API at 127.0.0.1 anyway).
  audit_policy
  start_proc kube-apiserver "$bin/kube-apiserver" \
    --audit-policy-file "$WML_KUBE_STATE/audit-policy.yaml" --audit-log-path "$logs_dir/audit.log" \
    --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --etcd-servers "https://127.0.0.1:$etcd_port" --etcd-cafile "$pki/ca.crt" \
    --etcd-certfile "$pki/apiserver-etcd-client.crt" --etcd-keyfile "$pki/apiserver-etcd-client.key" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --requestheader-client-ca-file "$pki/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --profiling=false
  wait_for kube-apiserver 120 https_ok "$api_url/readyz" admin
}

start_controller_manager() {
  start_proc kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfigs/controller-manager" \
    --authentication-kubeconfig "$kubeconfigs/controller-manager" \
    --authorization-kubeconfig "$kubeconfigs/controller-manager" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" --leader-elect=false \
    --tls-cert-file "$pki/controller-manager-serving.crt" --tls-private-key-file "$pki/controller-manager-serving.key" \
    --controllers '*' --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false \
    --kube-api-qps 100 --kube-api-burst 200  # scale tests make Jobs faster than the default 20/s
}

start_scheduler() {
  start_proc kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfigs/scheduler" \
    --authentication-kubeconfig "$kubeconfigs/scheduler" \
    --authorization-kubeconfig "$kubeconfigs/scheduler" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --profiling=false \
    --tls-cert-file "$pki/scheduler-serving.crt" --tls-private-key-file "$pki/scheduler-serving.key"
}

# Kueue's install manifests (config/components of its module, at the pinned version), copied
# once from the Go module cache (fetched through the proxy if missing) into the binaries' cache.
kueue_components() {
  local copy=$WML_KUBE_CACHE/kueue-$KUEUE_VERSION-components tmp dir
  if [ ! -d "$copy" ]; then
    tmp=$(mktemp -d)  # outside any module: the download changes no go.mod
    dir=$(cd "$tmp" && go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    rmdir "$tmp"
    [ -d "$dir/config/components" ] ||
      die "cannot fetch Kueue's module (go mod download sigs.k8s.io/kueue@$KUEUE_VERSION)"
    cp -r "$dir/config/components" "$copy.partial" && chmod -R u+w "$copy.partial" && mv "$copy.partial" "$copy"
  fi
  echo "$copy"
}

# Kueue's CRDs, webhooks and RBAC from its Go module (see scripts/kube/render_kueue.py).
install_kueue_objects() {
  local components
  components=$(kueue_components)
  "$python" "$kube_dir/render_kueue.py" "$components" "https://127.0.0.1:$webhook_port" "$pki/ca.crt" \
    kueue-manager batch/job >"$WML_KUBE_STATE/kueue/install.json"
  # The cluster is new: create (faster than an apply of 2 MB of CRDs).
  kubectl_admin create -f "$WML_KUBE_STATE/kueue/install.json" >/dev/null
  kubectl_admin wait --for condition=Established --timeout 60s crd --all >/dev/null
}

kueue_config() {
  cat >"$WML_KUBE_STATE/kueue/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
manageJobsWithoutQueueName: false
internalCertManagement: {enable: false}
webhook: {host: 127.0.0.1, port: $webhook_port, certDir: $WML_KUBE_STATE/kueue/webhook-certs}
health: {healthProbeBindAddress: "127.0.0.1:$kueue_health_port"}
metrics: {bindAddress: "0"}
leaderElection: {leaderElect: false}
clientConnection: {qps: 50, burst: 100}
integrations: {frameworks: ["batch/job"]}
# The visibility API is an aggregated API server with its own certificates: not installed.
featureGates: {VisibilityOnDemand: false}
EOF
}

# Kueue's manager reads its metrics certificate from a fixed path, /etc/kueue/metrics/certs, when
# its internal certificates are off. It runs in a mount namespace of its own where /etc is an
# overlay holding that file, so that nothing on this host outside the state dir is written.
start_kueue() {
  local k=$WML_KUBE_STATE/kueue userns=()
  mkdir -p "$k/webhook-certs" "$k/etc/kueue/metrics/certs" "$k/etc-work"
  cp "$pki/kueue-webhook.crt" "$k/webhook-certs/tls.crt"; cp "$pki/kueue-webhook.key" "$k/webhook-certs/tls.key"
  cp "$pki/kueue-webhook.crt" "$k/etc/kueue/metrics/certs/tls.crt"
  cp "$pki/kueue-webhook.key" "$k/etc/kueue/metrics/certs/tls.key"
  kueue_config
  [ "$(id -u)" = 0 ] || userns=(--user --map-root-user)
  start_proc kueue unshare "${userns[@]}" --mount --propagation private -- sh -c \
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc,workdir=$1/etc-work" /etc && shift && exec "$@"' \
    sh "$k" "$bin/kueue" --config "$k/config.yaml" --kubeconfig "$kubeconfigs/kueue" \
    --zap-log-level="${WML_KUBE_KUEUE_LOG_LEVEL:-info}"
}

# Kueue is ready when its webhooks answer the API server: a server-side dry run goes through them.
kueue_answers() {
  kubectl_admin create --dry-run=server -f - <<'EOF'
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: readiness-probe}
EOF
}

start_agent() {
  start_proc nodeagent env PYTHONPATH="$repo_dir/tests/k8s${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" -m nodeagent --state "$WML_KUBE_STATE" --version "$KUBERNETES_VERSION" \
    --nodes "${WML_KUBE_NODES:-2}" --gpus "${WML_KUBE_GPUS_PER_NODE:-2}" \
    --pretend-nodes "${WML_KUBE_PRETEND_NODES:-0}" \
    ${WML_KUBE_PRETEND_RUN_S:+--pretend-run-s "$WML_KUBE_PRETEND_RUN_S"} \
    --cpus "${WML_KUBE_CPUS_PER_NODE:-32}" --memory "${WML_KUBE_MEMORY_PER_NODE:-128Gi}" \
    --labels "${WML_KUBE_NODE_LABELS:-}" --taints "${WML_KUBE_NODE_TAINTS:-}" --port "$agent_port"
}

nodes_ready() {
  local want=$(( ${WML_KUBE_NODES:-2} + ${WML_KUBE_PRETEND_NODES:-0} ))
  [ "$(kubectl_admin get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)" -ge "$want" ]
}

no_nodes() { [ $(( ${WML_KUBE_NODES:-2} + ${WML_KUBE_PRETEND_NODES:-0} )) -eq 0 ]; }

kubectl_admin() { "$bin/kubectl" --kubeconfig "$kubeconfigs/admin" "$@"; }

# The state every other process (the backend, the tests, extra node agents) reads.
write_cluster_env() {
  cat >"$WML_KUBE_STATE/cluster.env" <<EOF
export KUBECONFIG=$(printf %q "$kubeconfigs/admin")
export PATH=$(printf %q "$bin"):\$PATH
export WML_KUBE_STATE=$(printf %q "$WML_KUBE_STATE")
export WML_KUBE_API=$api_url
export WML_KUBE_VERSION=$KUBERNETES_VERSION
EOF
}

# A fresh state dir. Only one this script made (its marker file) or an empty one is wiped.
wipe_state() {
  if [ -n "$(ls -A "$WML_KUBE_STATE" 2>/dev/null)" ] && [ ! -e "$WML_KUBE_STATE/.wml-kube-state" ] \
     && [ ! -e "$WML_KUBE_STATE/pki/ca.crt" ]; then
    die "$WML_KUBE_STATE holds files but no test cluster: not wiping it (set WML_KUBE_STATE)"
  fi
  rm -rf "$WML_KUBE_STATE"
  mkdir -p "$WML_KUBE_STATE/kueue" "$logs_dir" "$pids_dir"
  chmod 700 "$WML_KUBE_STATE"
  touch "$WML_KUBE_STATE/.wml-kube-state"
}

main() {
  python=$(project_python)
  bin=$(bash "$kube_dir/build.sh")
  if [ -d "$pids_dir" ]; then
    say "stopping the cluster already in $WML_KUBE_STATE"
    bash "$repo_dir/scripts/kube-down.sh"
  fi
  wipe_state
  # A start that fails stops what it started (the logs stay in the state dir).
  trap 'status=$?; [ $status -eq 0 ] || bash "$repo_dir/scripts/kube-down.sh"; exit $status' EXIT
  pick_ports
  pki_cluster "$pki" "$SERVICE_IP"
  for who in admin controller-manager scheduler kueue; do kubeconfig "$who" "$who"; done
  say "starting etcd and kube-apiserver on $api_url"
  start_etcd
  start_apiserver
  say "kube-apiserver ready at $((SECONDS - started)) s; starting controllers, scheduler, Kueue"
  start_controller_manager
  start_scheduler
  no_nodes || start_agent
  install_kueue_objects  # before Kueue starts: it needs its CRDs
  start_kueue
  wait_for kueue 120 kueue_answers
  wait_for kube-controller-manager 60 https_ok "https://127.0.0.1:$cm_port/healthz"
  wait_for kube-scheduler 60 https_ok "https://127.0.0.1:$sched_port/healthz"
  no_nodes || { wait_for nodeagent 120 nodes_ready; say "nodes Ready at $((SECONDS - started)) s"; }
  write_cluster_env
  say "cluster ready in $((SECONDS - started)) s (logs: $logs_dir)"
  cat "$WML_KUBE_STATE/cluster.env"
}

main "$@"
