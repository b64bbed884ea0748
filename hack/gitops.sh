#!/usr/bin/env bash
# The GitOps tools the tests check the operator with, built from their own Go modules once per
# version into a cache outside the clone (like the control plane):
#   gitops-check  (hack/gitops) kstatus (sigs.k8s.io/cli-utils, Flux's health), Argo CD's
#                 resource health and its ApplicationSet plugin client (argo-cd/v3)
#   helm          (hack/helm) helm.sh/helm/v4/cmd/helm, for the chart's lint and rendering
#   promtool      (hack/promtool) github.com/prometheus/prometheus/cmd/promtool, for the chart's
#                 alerts: promtool check rules and promtool test rules
#   flux-contract (hack/flux-contract) the Flux Operator's own ExternalService client: the test
#                 binary of its package internal/controller (an internal package, so no other
#                 module may import it) with hack/flux-contract/bbo_contract_test.go added and
#                 the package's own tests left out (they need envtest). Flux Operator
#                 $FLUX_OPERATOR; the module proxy refuses the pseudo-version of
#                 go-containerregistry/pkg/authn/kubernetes that it requires (403), so the
#                 nearest served one replaces it (used only by Flux's artifact registry login).
#   crds          the CRDs of Argo CD's ApplicationSet and the Flux Operator's
#                 ResourceSetInputProvider, copied from the same modules (a folder), for the
#                 tests of the operator's refresh annotations on the real API server
#
#   hack/gitops.sh build         build them (no-ops when they are there)
#   hack/gitops.sh path NAME     print the path of gitops-check, helm, promtool, flux-contract or crds
#                                (fails when not built)
#
# Argo CD v3.6 needs Go 1.27: for gitops-check the go command takes the approved go1.27.3
# toolchain from the Go module proxy (about 76 MB, once per machine); helm builds with the
# machine's Go. Environment:
#   BBO_GITOPS_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops)
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FLUX_OPERATOR=v0.59.0
AUTHN_KUBERNETES=v0.0.0-20260205022027-93aa2732266a
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

# The Argo CD version gitops-check is built against (its go.mod pins it).
ARGO_CD="$(sed -n 's|^\tgithub.com/argoproj/argo-cd/v3 \(v[^ ]*\)$|\1|p' "$HACK/gitops/go.mod")"

say() { printf 'gitops: %s\n' "$*" >&2; }
die() { printf 'gitops: error: %s\n' "$*" >&2; exit 1; }

module() { # <name> -> its wrapper module's folder
  case "$1" in
    gitops-check) echo "$HACK/gitops" ;;
    helm) echo "$HACK/helm" ;;
    promtool) echo "$HACK/promtool" ;;
    flux-contract) echo "$HACK/flux-contract" ;;
    *) die "no tool $1 (gitops-check, helm, promtool, flux-contract, crds)" ;;
  esac
}

toolchain() { # <name>
  if [ "$1" = helm ] || [ "$1" = promtool ]; then echo local; else echo go1.27.3; fi
}

cache_root() {
  echo "${BBO_GITOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/gitops}"
}

module_dir() { # <module@version> -> the folder the Go module proxy gave
  GOTOOLCHAIN=go1.27.3 GOFLAGS= go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}

binary() { # <name>
  local root dir key
  if [ "$1" = crds ]; then
    echo "$(cache_root)/crds-$ARGO_CD-$FLUX_OPERATOR"
    return
  fi
  root="$(cache_root)"
  dir="$(module "$1")"
  # The pinned, checksummed module graph and the program: any change is a new key.
  local files=("$dir"/*.go)
  if [ -f "$dir/go.mod" ]; then files+=("$dir/go.mod" "$dir/go.sum"); fi
  key="$( (cat "${files[@]}"; [ "$1" != flux-contract ] || echo "$FLUX_OPERATOR $AUTHN_KUBERNETES") |
    sha256sum | cut -c1-16)"
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
    elif [ "$1" = promtool ]; then
      (cd "$dir" && GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$out.partial" github.com/prometheus/prometheus/cmd/promtool)
    elif [ "$1" = flux-contract ]; then
      build_flux_contract "$dir" "$out.partial"
    else
      (cd "$dir" && GOTOOLCHAIN="$(toolchain "$1")" go build -trimpath -ldflags="-s -w" -o "$out.partial" .)
    fi || die "building $1 failed (see the go output above)"
    mv "$out.partial" "$out"
    say "built $1 in $((SECONDS - start))s: $out"
  fi
  exec 9>&-
}

build_crds() {
  local out argo flux
  out="$(binary crds)"
  [ ! -d "$out" ] || return 0
  argo="$(module_dir "github.com/argoproj/argo-cd/v3@$ARGO_CD")"
  flux="$(module_dir "github.com/controlplaneio-fluxcd/flux-operator@$FLUX_OPERATOR")"
  [ -d "$argo" ] && [ -d "$flux" ] || die "the module proxy did not give argo-cd $ARGO_CD or flux-operator $FLUX_OPERATOR"
  rm -rf "$out.partial" && mkdir -p "$out.partial"
  cp "$argo/manifests/crds/applicationset-crd.yaml" \
    "$flux/config/crd/bases/fluxcd.controlplane.io_resourcesetinputproviders.yaml" "$out.partial/"
  chmod u+w "$out.partial"/*
  mv "$out.partial" "$out"
}

build_flux_contract() { # <our folder> <output>
  local module work
  module="$(module_dir "github.com/controlplaneio-fluxcd/flux-operator@$FLUX_OPERATOR")"
  [ -d "$module" ] || die "the module proxy did not give flux-operator $FLUX_OPERATOR"
  work="$(mktemp -d)"
  cp -r "$module" "$work/flux-operator" && chmod -R u+w "$work/flux-operator"
  rm -f "$work"/flux-operator/internal/controller/*_test.go
  cp "$1"/*_test.go "$work/flux-operator/internal/controller/"
  echo "replace github.com/google/go-containerregistry/pkg/authn/kubernetes => github.com/google/go-containerregistry/pkg/authn/kubernetes $AUTHN_KUBERNETES" \
    >>"$work/flux-operator/go.mod"
  (cd "$work/flux-operator" && GOTOOLCHAIN=go1.27.3 GOFLAGS=-mod=mod \
    go test -c -trimpath -ldflags="-s -w" -o "$2" ./internal/controller)
  local status=$?
  rm -rf "$work"
  return $status
}

case "${1:-}" in
  build)
    command -v go >/dev/null 2>&1 || die "'go' is not installed (the polyglot machines ship one in /usr/local/go/bin)"
    build gitops-check
    build helm
    build promtool
    build flux-contract
    build_crds ;;
  path)
    out="$(binary "${2:-}")"
    [ -x "$out" ] || die "${2:-} is not built: run hack/gitops.sh build (make test does)"
    echo "$out" ;;
  *) die "usage: hack/gitops.sh build | path gitops-check|helm|promtool|flux-contract|crds" ;;
esac
