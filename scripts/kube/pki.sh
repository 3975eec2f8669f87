#!/usr/bin/env bash
# The test cluster's PKI, made with openssl: one CA signs every certificate (EC P-256 keys: fast to
# make, accepted by every component). Sourced by kube-up.sh; also a command that issues node client
# certificates for node agents started later:  pki.sh PKI_DIR node NAME...
set -euo pipefail

# pki_ca DIR: the cluster CA (ca.crt, ca.key), valid ten years.
pki_ca() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -config <(cat <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = wml-kube-ca
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
CNF
) 2>/dev/null
  chmod 600 "$dir/ca.key"
}

# pki_issue DIR NAME CN ORG USAGE [SAN]: NAME.crt/NAME.key signed by the CA in DIR.
# USAGE is clientAuth, serverAuth or both ("serverAuth, clientAuth"); ORG may be empty.
pki_issue() {
  local dir=$1 name=$2 cn=$3 org=$4 usage=$5 san=${6:-}
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 365 \
    -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -keyout "$dir/$name.key" -out "$dir/$name.crt" \
    -extensions ext -config <(cat <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
${org:+O = $org}
CN = $cn
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = $usage
authorityKeyIdentifier = keyid
${san:+subjectAltName = $san}
CNF
) 2>/dev/null
  chmod 600 "$dir/$name.key"
}

# pki_node DIR NAME: the client certificate of node NAME (the Node authorizer's identity).
pki_node() {
  mkdir -p "$1/nodes"
  [ -s "$1/nodes/$2.crt" ] && return 0
  pki_issue "$1" "nodes/$2" "system:node:$2" system:nodes clientAuth
}

# pki_cluster DIR SERVICE_IP: every certificate of the control plane.
pki_cluster() {
  local dir=$1 service_ip=$2 loopback="IP:127.0.0.1, DNS:localhost"
  pki_ca "$dir"
  pki_issue "$dir" etcd-server etcd "" "serverAuth, clientAuth" "$loopback"
  pki_issue "$dir" apiserver-etcd-client kube-apiserver-etcd-client "" clientAuth
  pki_issue "$dir" apiserver kube-apiserver "" serverAuth "$loopback, IP:$service_ip, DNS:kubernetes, \
DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
  # The API server's identity towards node agents (pod logs), as the kubelet client certificate.
  pki_issue "$dir" apiserver-kubelet-client kube-apiserver-kubelet-client "" clientAuth
  pki_issue "$dir" admin kubernetes-admin system:masters clientAuth
  pki_issue "$dir" controller-manager system:kube-controller-manager "" clientAuth
  pki_issue "$dir" scheduler system:kube-scheduler "" clientAuth
  pki_issue "$dir" kueue kueue-manager "" clientAuth
  pki_issue "$dir" kueue-webhook kueue-webhook "" serverAuth "$loopback"
  pki_issue "$dir" node-serving nodeagent "" serverAuth "$loopback"
  pki_issue "$dir" controller-manager-serving kube-controller-manager "" serverAuth "$loopback"
  pki_issue "$dir" scheduler-serving kube-scheduler "" serverAuth "$loopback"
  # The aggregation layer's identity (request-header authentication of extension API servers).
  pki_issue "$dir" front-proxy-client front-proxy-client "" clientAuth
  # ServiceAccount tokens are signed with this key (ES256) and checked with its public half.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/sa.key" 2>/dev/null
  openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  chmod 600 "$dir/sa.key"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  [ $# -ge 3 ] && [ "$2" = node ] || { echo "usage: $0 PKI_DIR node NAME..." >&2; exit 2; }
  dir=$1; shift 2
  for name in "$@"; do pki_node "$dir" "$name"; done
fi
