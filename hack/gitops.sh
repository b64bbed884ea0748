#!/usr/bin/env bash
# The GitOps tools the tests check the operator with, built from their own Go modules once per
# version into a cache outside the clone (like the control plane):
#   gitops-check  (hack/gitops) kstatus (sigs.k8s.io/cli-utils, Flux's health), Argo CD's
#                 resource health and its ApplicationSet plugin client (argo-cd/v3)
#   helm          (hack/helm) helm.sh/helm/v4/cmd/helm, for the chart's lint and rendering
#
#   hack/gitops.sh build         build both (no-ops when they are there)
#   hack/gitops.sh path NAME     print the path of gitops-check or helm (fails when not built)
#
# Argo CD v3.6 needs Go 1.27: for gitops-check the go command takes the approved go1.27.3
# toolchain from the Go module proxy (about 76 MB, once per machine); helm builds with the
# machine's Go. Environment:
#   BBO_GITOPS_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops)
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

say() { printf 'gitops: %s\n' "$*" >&2; }
die() { printf 'gitops: error: %s\n' "$*" >&2; exit 1; }

module() { # <name> -> its wrapper module's folder
  case "$1" in
    gitops-check) echo "$HACK/gitops" ;;
    helm) echo "$HACK/helm" ;;
    *) die "no tool $1 (gitops-check, helm)" ;;
  esac
}

toolchain() { # <name>
  if [ "$1" = gitops-check ]; then echo go1.27.3; else echo local; fi
}

binary() { # <name>
  local root dir key
  root="${BBO_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops}"
  dir="$(module "$1")"
  # The pinned, checksummed module graph and the program: any change is a new key.
  key="$(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -c1-16)"
  echo "$root/$1-$key-$(toolchain "$1")/$1"
}

build() { # <name>
  local out start dir
  out="$(binary "$1")"
  dir="$(module "$1")"
  mkdir -p "$(dirname "$out")"
  exec 9>"$(dirname "$out").lock"
  flock 9 # one builder per key; a second caller waits, then finds the binary
  if [ ! -x "$out" ]; then
    start=$SECONDS
    say "building $1 from $dir (cold: a few minutes on 2 cores)"
    if [ "$1" = helm ]; then
      (cd "$dir" && GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$out.partial" helm.sh/helm/v4/cmd/helm)
    else
      (cd "$dir" && GOTOOLCHAIN="$(toolchain "$1")" go build -trimpath -ldflags="-s -w" -o "$out.partial" .)
    fi || die "building $1 failed (see the go output above)"
    mv "$out.partial" "$out"
    say "built $1 in $((SECONDS - start))s: $out"
  fi
  exec 9>&-
}

case "${1:-}" in
  build)
    command -v go >/dev/null 2>&1 || die "'go' is not installed (the polyglot machines ship one in /usr/local/go/bin)"
    build gitops-check
    build helm ;;
  path)
    out="$(binary "${2:-}")"
    [ -x "$out" ] || die "${2:-} is not built: run hack/gitops.sh build (make test does)"
    echo "$out" ;;
  *) die "usage: hack/gitops.sh build | path gitops-check|helm" ;;
esac
