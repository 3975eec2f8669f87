#!/usr/bin/env bash
# Stops the test cluster that scripts/kube-up.sh started in $WML_KUBE_STATE: first the node
# agents (and the pod processes they started), then Kueue, the scheduler, the controller manager
# and kube-apiserver, then etcd. Each gets SIGTERM, then SIGKILL if it lingers. Leaves the state
# dir for post-mortems (the next kube-up wipes it).
set -euo pipefail
. "$(dirname "$0")/kube/common.sh"

# Node agents (the one of kube-up and any started later, pids/nodeagent*.pid) stop their pods.
agents=()
for pidfile in "$pids_dir"/nodeagent*.pid; do [ -e "$pidfile" ] && agents+=("$(basename "$pidfile" .pid)"); done
stop_procs 15 "${agents[@]}"
# Pod processes left by an agent that was killed: each agent records their process groups
# under agent/procs/<agent pid>/.
groups=()
for pgfile in "$WML_KUBE_STATE"/agent/procs/*/*; do [ -e "$pgfile" ] && groups+=("$(basename "$pgfile")"); done
stop_groups 2 "${groups[@]}"
rm -rf "$WML_KUBE_STATE"/agent/procs/*
# The control plane together, then etcd (the API server's shutdown should not wait for it).
stop_procs 10 kueue kube-scheduler kube-controller-manager kube-apiserver
stop_procs 10 etcd
rmdir "$pids_dir" 2>/dev/null || true
say "stopped (state kept in $WML_KUBE_STATE)"
