#!/usr/bin/env bash
# Builds the operator's image from source, pulling nothing:
#   hack/image.sh binary   the static (musl) release binary, copied to target/image/
#   hack/image.sh build    the binary, then the Dockerfile (FROM scratch) with buildah, or docker
#                          where there is no buildah; also exports target/image/<name>.oci.tar
#                          (an OCI archive, for `ctr -n k8s.io images import`)
# Environment: IMAGE (default bitbucket-operator:<version in Cargo.toml>); BBO_IMAGE_DIR, where
# the binary and the archive go (default target/image).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
TARGET=x86_64-unknown-linux-musl
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
IMAGE="${IMAGE:-bitbucket-operator:$VERSION}"
OUT="${BBO_IMAGE_DIR:-$REPO/target/image}"

say() { printf '\033[1mimage:\033[0m %s\n' "$*" >&2; }

binary() {
  rustup target list --installed 2>/dev/null | grep -x "$TARGET" >/dev/null || {
    say "the Rust target $TARGET is missing: hack/prerequisites.sh adds it"
    exit 1
  }
  say "building the static release binary ($TARGET)"
  # musl-gcc compiles ring's C and assembly for the musl target.
  (cd "$REPO" && CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --target "$TARGET" -p bitbucket-operator --bin bitbucket-operator)
  local dir
  dir="$(cd "$REPO" && cargo metadata --locked --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  mkdir -p "$OUT"
  cp "$dir/$TARGET/release/bitbucket-operator" "$OUT/bitbucket-operator"
  # Symbols only make the image bigger; panics still name their place.
  strip "$OUT/bitbucket-operator"
  say "$OUT/bitbucket-operator: $(du -h "$OUT/bitbucket-operator" | cut -f1)"
}

# The binary's path in the build context (the repository).
binary_in_context() {
  case "$OUT" in
    "$REPO"/*) echo "${OUT#"$REPO"/}/bitbucket-operator" ;;
    *) say "BBO_IMAGE_DIR must be inside the repository (the build context): $OUT"; exit 1 ;;
  esac
}

build() {
  binary
  local archive="$OUT/${IMAGE%%:*}.oci.tar"
  if command -v buildah >/dev/null 2>&1; then
    say "building $IMAGE with buildah"
    buildah bud --quiet --layers=false -f "$REPO/Dockerfile" --build-arg "BINARY=$(binary_in_context)" \
      -t "$IMAGE" "$REPO" >/dev/null
    rm -f "$archive"
    buildah push --quiet "$IMAGE" "oci-archive:$archive:$IMAGE"
  elif command -v docker >/dev/null 2>&1; then
    say "building $IMAGE with docker"
    docker build --build-arg "BINARY=$(binary_in_context)" -t "$IMAGE" "$REPO"
    docker save -o "$archive" "$IMAGE"
  else
    say "neither buildah nor docker is installed (hack/prerequisites.sh installs buildah)"
    exit 1
  fi
  say "$IMAGE: $(du -h "$archive" | cut -f1) as an OCI archive in $archive"
}

case "${1:-build}" in
  binary) binary ;;
  build) build ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
