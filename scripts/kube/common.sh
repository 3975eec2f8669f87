# Shared by kube-up.sh and kube-down.sh (sourced): where the test cluster keeps its state and how
# its processes are started and stopped. Every process is started in a session of its own
# (setsid), so that its pid is also its process group and stopping it stops all it started.
kube_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$kube_dir/../.." && pwd)
. "$kube_dir/versions.sh"
WML_KUBE_STATE=${WML_KUBE_STATE:-$HOME/.cache/wml-kube/state}
pids_dir=$WML_KUBE_STATE/pids
logs_dir=$WML_KUBE_STATE/logs

say() { echo "kube: $*" >&2; }
die() { echo "kube: error: $*" >&2; exit 1; }

# The interpreter of the project's venv (the node agent and the manifest renderer run with it).
project_python() {
  local py=${WML_PYTHON:-$repo_dir/.venv/bin/python}
  [ -x "$py" ] || py=$(command -v python3) || die "no python: run scripts/setup.sh"
  echo "$py"
}

# start_proc NAME CMD...: CMD in a new session, output to logs/NAME.log, pid to pids/NAME.pid.
start_proc() {
  local name=$1; shift
  mkdir -p "$pids_dir" "$logs_dir"
  setsid "$@" </dev/null >>"$logs_dir/$name.log" 2>&1 &
  echo $! >"$pids_dir/$name.pid"
}

proc_alive() {  # proc_alive NAME: is the recorded process still there?
  local pid
  pid=$(cat "$pids_dir/$1.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

# ours PID: does the process belong to this cluster (its command line or environment names the
# state dir)? A pid file can outlive its process, and the pid be reused by another.
ours() {
  { tr '\0' '\n' <"/proc/$1/cmdline"; tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null |
    awk -v s="$WML_KUBE_STATE" '{ i = index($0, s); if (i) { c = substr($0, i + length(s), 1)
                                  if (c == "" || c == "/") found = 1 } } END { exit !found }'
}

# stop_groups GRACE_S PGID...: SIGTERM to each process group, SIGKILL to what is left after
# GRACE_S. A leader that is not ours is left alone (while a group has members its id is not
# reused); a pid that leads no group (started by hand?) gets the signals itself.
stop_groups() {
  local grace=$1 waited=0 pgid targets=(); shift
  for pgid in "$@"; do
    if [ -e "/proc/$pgid" ] && ! ours "$pgid"; then continue; fi
    if kill -TERM -- "-$pgid" 2>/dev/null; then targets+=("-$pgid")
    elif kill -TERM "$pgid" 2>/dev/null; then targets+=("$pgid"); fi
  done
  [ ${#targets[@]} -gt 0 ] || return 0
  while [ "$waited" -lt $((grace * 10)) ] && kill -0 -- "${targets[@]}" 2>/dev/null; do
    sleep 0.1; waited=$((waited + 1))
  done
  for pgid in "${targets[@]}"; do kill -KILL -- "$pgid" 2>/dev/null || true; done
}

# stop_procs GRACE_S NAME...: stop the processes recorded as pids/NAME.pid, all at once.
stop_procs() {
  local grace=$1 name pids=(); shift
  for name in "$@"; do
    [ -e "$pids_dir/$name.pid" ] || continue
    pids+=("$(cat "$pids_dir/$name.pid")")
    rm -f "$pids_dir/$name.pid"
  done
  [ ${#pids[@]} -eq 0 ] || stop_groups "$grace" "${pids[@]}"
}
