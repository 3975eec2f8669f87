#!/usr/bin/env bash
# Builds the test cluster's binaries once from the Go module proxy, cached under ~/.cache keyed by
# version: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd (pinned in
# go.mod beside this file) and Kueue's manager. Prints the folder that holds them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
bin="$WML_KUBE_CACHE/bin"
mkdir -p "$bin"
wanted=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kueue)
missing=()
for name in "${wanted[@]}"; do [ -x "$bin/$name" ] || missing+=("$name"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
version_flags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=${KUBERNETES_VERSION:1:1}"
  version_flags+=" -X $pkg.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
done
started=$SECONDS
build() {  # build NAME PACKAGE: one binary, with a progress line on stderr
  local name=$1 pkg=$2
  [ -x "$bin/$name" ] && return 0
  echo "kube build: $name ($pkg) ..." >&2
  (cd "$here" && go build -ldflags "$version_flags" -o "$bin/$name.partial" "$pkg")
  mv "$bin/$name.partial" "$bin/$name"
  echo "kube build: $name done at $((SECONDS - started)) s" >&2
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
if [ ! -x "$bin/kueue" ]; then
  echo "kube build: kueue (sigs.k8s.io/kueue@$KUEUE_VERSION) ..." >&2
  # Kueue's own go.mod has no replace lines, so it installs straight from the proxy.
  gobin=$(mktemp -d)
  (cd "$gobin" && GOFLAGS="-trimpath -buildvcs=false" GOBIN="$gobin" \
    go install -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
  mv "$gobin/kueue" "$bin/kueue" && rmdir "$gobin"
  echo "kube build: kueue done at $((SECONDS - started)) s" >&2
fi
echo "$bin"
