#!/usr/bin/env bash
# gitops-check: how Flux (kstatus) and Argo CD (resource health, the ApplicationSet plugin
# client) see the operator's objects, computed by their own Go code (hack/gitops). Built once per
# version into the cache outside the clone, like the control plane; tests run the cached binary.
#
#   hack/gitops.sh build   build it (a no-op when it is there); prints its path
#   hack/gitops.sh path    print its path (fails when it is not built)
#
# Argo CD v3.6 needs Go 1.27: the go command takes the approved go1.27.3 toolchain from the Go
# module proxy (about 76 MB, once per machine). Environment:
#   BBO_GITOPS_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops)
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=go1.27.3 CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

say() { printf 'gitops: %s\n' "$*" >&2; }
die() { printf 'gitops: error: %s\n' "$*" >&2; exit 1; }

binary() {
  local root key
  root="${BBO_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops}"
  # The pinned, checksummed module graph and the program: any change is a new key.
  key="$(cat "$HACK/gitops/go.mod" "$HACK/gitops/go.sum" "$HACK/gitops/main.go" | sha256sum | cut -c1-16)"
  echo "$root/$key-$GOTOOLCHAIN/gitops-check"
}

cmd_build() {
  command -v go >/dev/null 2>&1 || die "'go' is not installed (the polyglot machines ship one in /usr/local/go/bin)"
  local out start
  out="$(binary)"
  mkdir -p "$(dirname "$out")"
  exec 9>"$(dirname "$out").lock"
  flock 9 # one builder per key; a second caller waits, then finds the binary
  if [ ! -x "$out" ]; then
    start=$SECONDS
    say "building gitops-check: kstatus (sigs.k8s.io/cli-utils) and Argo CD's health and plugin client (argo-cd/v3); cold: many minutes on 2 cores"
    (cd "$HACK/gitops" && go build -trimpath -ldflags="-s -w" -o "$out.partial" .) ||
      die "building gitops-check failed (see the go output above)"
    mv "$out.partial" "$out"
    say "built in $((SECONDS - start))s: $out"
  fi
  echo "$out"
}

case "${1:-}" in
  build) cmd_build ;;
  path)
    out="$(binary)"
    [ -x "$out" ] || die "gitops-check is not built: run hack/gitops.sh build (make test does)"
    echo "$out" ;;
  *) die "usage: hack/gitops.sh build|path" ;;
esac
