#!/usr/bin/env bash
# Installs what `make test` and `make run` need and this machine lacks, from Debian's packages.
# Toolchains (Go >= 1.26, Rust with clippy and rustfmt) cannot come from apt at a usable version,
# so their absence is reported with what to do. Safe to run repeatedly: installs nothing when
# everything is present. Print `export PATH=...` hints when toolchains exist off PATH.
set -euo pipefail

missing=()
want() { # <command> <debian package>
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
want make make
want cc gcc
want openssl openssl
want curl curl
want python3 python3
want setsid util-linux
want flock util-linux
want git git
# The image (make image) and the node (kubelet's runtime, pod networking, Service rules).
want buildah buildah
want musl-gcc musl-tools
want containerd containerd
want runc runc
want iptables iptables
want conntrack conntrack
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "prerequisites: missing ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "prerequisites: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v go >/dev/null 2>&1 || {
  echo "prerequisites: 'go' is not on PATH: a Go toolchain >= 1.26 is needed to build the control plane" >&2
  echo "  (polyglot machines have it in /usr/local/go/bin: export PATH=/usr/local/go/bin:\$PATH)" >&2
  exit 1
}
command -v cargo >/dev/null 2>&1 || {
  echo "prerequisites: 'cargo' is not on PATH: a Rust toolchain >= 1.89 is needed" >&2
  echo "  (rustup installs it into ~/.cargo/bin: export PATH=\$HOME/.cargo/bin:\$PATH)" >&2
  exit 1
}
# The image's binary is static (musl); rustup adds the target from the Rust distribution.
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl || {
  echo "prerequisites: adding the Rust target x86_64-unknown-linux-musl" >&2
  rustup target add x86_64-unknown-linux-musl >/dev/null
}
for component in clippy rustfmt; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || {
    echo "prerequisites: cargo $component is missing: rustup component add $component" >&2
    exit 1
  }
done
