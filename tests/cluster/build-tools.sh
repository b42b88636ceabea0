#!/usr/bin/env bash
# Build the control-plane tools (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, minio) from their pinned Go modules under
# tests/cluster/go/, into a cache directory keyed by the module's content and the
# Go version, so that a second run builds nothing.
#
#   tests/cluster/build-tools.sh [TOOL...]     prints "name=/path/to/binary" lines
#
# Cache: ${STOKER_CACHE:-$HOME/.cache/stoker}/bin/<module>-<key>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${STOKER_CACHE:-$HOME/.cache/stoker}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
gov=$(go env GOVERSION)

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
want=("$@")
for t in "${targets[@]}"; do
  IFS=: read -r mod bin pkg <<<"$t"
  if [ ${#want[@]} -gt 0 ] && ! printf '%s\n' "${want[@]}" | grep -qx "$bin"; then continue; fi
  key=$(cat "$here/go/$mod"/go.mod "$here/go/$mod"/go.sum "$here/go/$mod"/*.go <(echo "$gov") | sha256sum | cut -c1-12)
  out="$cache/bin/$mod-$key"
  if [ ! -x "$out/$bin" ]; then
    mkdir -p "$out"
    echo "building $bin ($mod, $gov) -> $out (first time only: minutes on 2 cores)" >&2
    start=$SECONDS
    ldflags="-s -w"
    if [ "$mod" = kubernetes ]; then
      v=$(awk '/k8s.io\/kubernetes v/{print $2; exit}' "$here/go/$mod/go.mod")
      # What `kubectl version` / the apiserver report: the same stamp k8s' own build sets.
      ldflags="$ldflags -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) -X k8s.io/client-go/pkg/version.gitVersion=$v"
    fi
    (cd "$here/go/$mod" && go build -trimpath -ldflags "$ldflags" -o "$out/$bin.tmp" "$pkg")
    mv "$out/$bin.tmp" "$out/$bin"
    echo "built $bin in $((SECONDS - start))s" >&2
  fi
  echo "$bin=$out/$bin"
done
