# The pinned releases of the test cluster (go.mod pins Kubernetes and etcd; keep them in step).
KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.5
KUEUE_VERSION=v0.17.0
WML_KUBE_CACHE=${WML_KUBE_CACHE:-$HOME/.cache/wml-kube/$KUBERNETES_VERSION-etcd$ETCD_VERSION-kueue$KUEUE_VERSION}
