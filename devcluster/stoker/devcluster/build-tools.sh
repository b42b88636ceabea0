#!/usr/bin/env bash
# Build the control-plane tools (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, minio), the real-node tools (kubelet, kube-proxy,
# coredns), Kueue and Kubeflow's training-operator from their pinned Go modules under
# devcluster/stoker/devcluster/go/, into a cache directory keyed by the module's content and the
# Go version, so that a second run builds nothing.
#
#   devcluster/stoker/devcluster/build-tools.sh [TOOL...]     prints "name=/path/to/binary" lines
#   (no TOOL: the control-plane tools only; the real-node tools, kueue and training-operator are
#   built when named)
#
# Cache: ${STOKER_CACHE:-$HOME/.cache/stoker}/bin/<module>-<key>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${STOKER_CACHE:-$HOME/.cache/stoker}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
gov=$(go env GOVERSION)
# One build at a time per cache (two `cluster up`s at once must not race on a tool).
mkdir -p "$cache/bin"
exec 9>"$cache/bin/.build.lock"
if ! flock -n 9; then
  echo "waiting for another build of the tools to finish (lock: $cache/bin/.build.lock)" >&2
  flock 9
fi

# module dir : binary : package
targets=(
  "etcd:etcd:."
  "kubernetes:kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver"
  "kubernetes:kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager"
  "kubernetes:kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler"
  "kubernetes:kubectl:k8s.io/kubernetes/cmd/kubectl"
  "kwok:kwok:sigs.k8s.io/kwok/cmd/kwok"
  "helm:helm:helm.sh/helm/v3/cmd/helm"
  "minio:minio:github.com/minio/minio"
)
# Real-node tools: built only when named (`build-tools.sh kubelet kube-proxy coredns`), so
# `make tools` and process-node/kwok clusters do not pay for them.
node_targets=(
  "kubelet:kubelet:k8s.io/kubernetes/cmd/kubelet"
  "kubelet:kube-proxy:k8s.io/kubernetes/cmd/kube-proxy"
  "coredns:coredns:github.com/coredns/coredns"
  # Kueue's controller-manager (`build-tools.sh kueue`): only clusters started with Kueue need it.
  "kueue:kueue:sigs.k8s.io/kueue/cmd/kueue"
  # Kubeflow training-operator v1.8.1 (`build-tools.sh training-operator`): only the side-by-side
  # scale benchmark (bench/bench_operator_scale.py) runs it.
  "training-operator:training-operator:github.com/kubeflow/training-operator/cmd/training-operator.v1"
)
want=("$@")
[ ${#want[@]} -gt 0 ] && targets+=("${node_targets[@]}")
for t in "${targets[@]}"; do
  IFS=: read -r mod bin pkg <<<"$t"
  if [ ${#want[@]} -gt 0 ]; then
    # (no `printf | grep -q` here: with pipefail, grep's early exit can SIGPIPE printf and
    # make a wanted tool look unwanted)
    wanted=0
    for w in "${want[@]}"; do [ "$w" = "$bin" ] && wanted=1; done
    [ $wanted = 1 ] || continue
  fi
  ldflags="-s -w" stamp=""
  if [ "$mod" = kubernetes ] || [ "$mod" = kubelet ]; then
    # The pinned version, from `require k8s.io/kubernetes vX.Y.Z` (single line or block).
    v=$(awk '{for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes" && $(i+1) ~ /^v[0-9]/) {print $(i+1); exit}}' "$here/go/$mod/go.mod")
    case "$v" in v[0-9]*.[0-9]*.[0-9]*) ;; *) echo "cannot read the k8s.io/kubernetes version from $here/go/$mod/go.mod (got '$v')" >&2; exit 1;; esac
    # What `kubectl version` / the apiserver report: the same stamp k8s' own build sets
    # (the apiserver parses it as a semantic version at startup).
    stamp="-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) -X k8s.io/client-go/pkg/version.gitVersion=$v"
    ldflags="$ldflags $stamp"
  fi
  # The key covers everything that changes the binary: module files, Go version, version stamp.
  key=$(cat "$here/go/$mod"/go.mod "$here/go/$mod"/go.sum "$here/go/$mod"/*.go <(echo "$gov${stamp:+ $stamp}") | sha256sum | cut -c1-12)
  out="$cache/bin/$mod-$key"
  if [ ! -x "$out/$bin" ]; then
    mkdir -p "$out"
    echo "building $bin ($mod, $gov) -> $out (first time only: minutes on 2 cores)" >&2
    start=$SECONDS
    (cd "$here/go/$mod" && go build -trimpath -ldflags "$ldflags" -o "$out/$bin.tmp" "$pkg")
    mv "$out/$bin.tmp" "$out/$bin"
    echo "built $bin in $((SECONDS - start))s" >&2
  fi
  echo "$bin=$out/$bin"
done
