#!/usr/bin/env bash
# A real node for the local control plane: containerd and runc (Debian's packages), kubelet
# and kube-proxy (built with the plane from the same Kubernetes module), and pod networking by
# the CNI bridge plugin (Debian's) on the bridge bbo0, which has no uplink: pods reach this
# machine only (the API server and test servers listen on the bridge address), and nothing is
# forwarded off it. Images are never pulled: the pause image is built here (hack/pause) and
# others are imported (`import`).
#
#   hack/node.sh bridge           create bbo0 (10.244.0.1/24) if missing (the plane's `up --node`
#                                 calls it before starting the API server on that address)
#   hack/node.sh up               start containerd, kubelet, kube-proxy and kube-scheduler; wait
#                                 for the node to be Ready (the plane must be up with --node)
#   hack/node.sh import ARCHIVE   load an OCI image archive into the node's containerd
#   hack/node.sh down             stop everything and remove every mount, network namespace,
#                                 interface and iptables rule the node made
#   hack/node.sh leftovers        print what `down` would have to remove (empty when clean)
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
PLANE_RUN="${BBO_RUN_DIR:-$REPO/.run/control-plane}"
RUN="$PLANE_RUN/node"
BRIDGE=bbo0
GATEWAY=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
NODE_NAME=bbo-node
PAUSE_IMAGE=localhost/bbo-pause:1
CNI_BIN=/usr/lib/cni
NETNS_PREFIX=cni-
export GOTOOLCHAIN=local CGO_ENABLED=0

say() { printf '\033[1mnode:\033[0m %s\n' "$*" >&2; }
die() { # keeps the logs in .run/node.failed/ (the node's directory goes with `down`)
  say "$*"
  if [ -d "$RUN" ]; then
    rm -rf "$REPO/.run/node.failed"; mkdir -p "$REPO/.run/node.failed"
    cp "$RUN"/*.log "$REPO/.run/node.failed/" 2>/dev/null || true
    say "logs kept in $REPO/.run/node.failed/"
  fi
  exit 1
}

# Any failing step says which and keeps the logs.
trap 'die "failed: $BASH_COMMAND (line $LINENO)"' ERR

plane_bin() { "$HACK/control-plane.sh" bin-path; }
kubectl() { "$(plane_bin)/kubectl" --kubeconfig "$PLANE_RUN/kubeconfig" "$@"; }
ctr_() { ctr --address "$RUN/containerd/containerd.sock" -n k8s.io "$@"; }

cmd_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # This machine's own traffic to Service addresses stays here too (kube-proxy rewrites it to a
  # pod's), instead of following the default route when no rule matches.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$GATEWAY"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

launch() { # <name> <binary> [args...]
  local name="$1"; shift
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

wait_for() { # <what> <seconds> <command...>
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what; logs in $RUN"
    sleep 0.5
  done
}

# The pause image, built once per Go version into the plane's cache.
pause_archive() {
  local cache archive
  cache="$(dirname "$(plane_bin)")/pause-$(go env GOVERSION)"
  archive="$cache/pause.oci.tar"
  if [ ! -f "$archive" ]; then
    say "building the pause image"
    mkdir -p "$cache"
    (cd "$HACK/pause" && go build -trimpath -ldflags="-s -w" -o "$cache/pause" .)
    buildah bud --quiet --layers=false -f "$HACK/pause/Containerfile" -t "$PAUSE_IMAGE" "$cache" >/dev/null
    buildah push --quiet "$PAUSE_IMAGE" "oci-archive:$archive.partial:$PAUSE_IMAGE"
    buildah rmi "$PAUSE_IMAGE" >/dev/null
    mv "$archive.partial" "$archive"
  fi
  echo "$archive"
}

write_configs() {
  mkdir -p "$RUN"/{containerd,cni,kubelet,pods,logs}
  cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # This machine does not let processes lower their OOM score (kubelet asks -998 for a pod's
  # sandbox): keep every container's at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$RUN/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$RUN/containerd/registry"
EOF
  # Pods get an address on the bridge and routes to this machine and the Service range only:
  # no default route, no masquerading.
  cat >"$RUN/cni/10-bbo.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bbo",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # No name servers: pods resolve nothing, so they cannot even ask off-machine.
  : >"$RUN/resolv.conf"
  cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $GATEWAY
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
resolvConf: $RUN/resolv.conf
podLogsDir: $RUN/logs
cgroupsPerQOS: false
enforceNodeAllocatable: []
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
registerNode: true
EOF
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "the node needs root (containerd, network namespaces, iptables)"
  [ -f "$PLANE_RUN/kubeconfig" ] || die "the control plane is not up: hack/control-plane.sh up --node"
  # Read whole, then matched: `ip ... | grep -q` can die of SIGPIPE under pipefail.
  local addresses
  addresses="$(ip -o addr show dev "$BRIDGE" 2>/dev/null || true)"
  [[ "$addresses" == *" $GATEWAY/"* ]] ||
    die "no $BRIDGE with $GATEWAY: start the plane with 'hack/control-plane.sh up --node'"
  if alive containerd && alive kubelet && alive kube-proxy && alive kube-scheduler; then
    say "already up"; return 0
  fi
  local bin start=$SECONDS archive
  bin="$(plane_bin)"
  [ -x "$bin/kubelet" ] && [ -x "$bin/kube-proxy" ] && [ -x "$bin/kube-scheduler" ] ||
    die "the node's binaries are not built: hack/control-plane.sh build --node"
  archive="$(pause_archive)"
  write_configs
  cp "$PLANE_RUN/kubeconfig" "$RUN/kubeconfig"

  launch containerd containerd --config "$RUN/containerd/config.toml"
  wait_for containerd 60 ctr_ version
  wait_for "the pause image to load" 60 ctr_ images import --no-unpack=false "$archive"

  launch kubelet "$bin/kubelet" --config="$RUN/kubelet/config.yaml" \
    --kubeconfig="$RUN/kubeconfig" --root-dir="$RUN/kubelet/root" --cert-dir="$RUN/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$GATEWAY" --v=1
  wait_for "the node to register" 60 kubectl get node "$NODE_NAME"
  kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=90s >/dev/null ||
    die "the node did not become Ready; see $RUN/kubelet.log"

  cat >"$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
clientConnection: {kubeconfig: $RUN/kubeconfig}
conntrack: {maxPerCore: 0, min: 0}
iptables: {localhostNodePorts: false}
nodePortAddresses: [$GATEWAY/32]
EOF
  launch kube-proxy "$bin/kube-proxy" --config="$RUN/kube-proxy.yaml"
  launch kube-scheduler "$bin/kube-scheduler" --kubeconfig="$RUN/kubeconfig" \
    --authentication-kubeconfig="$RUN/kubeconfig" --authorization-kubeconfig="$RUN/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port="$(free_port)"
  wait_for "kube-proxy's rules" 60 iptables -t nat -n -L KUBE-SERVICES
  say "up in $((SECONDS - start))s: node $NODE_NAME Ready; pods on $POD_CIDR; logs in $RUN"
}

cmd_import() { # <archive>
  [ -f "${1:-}" ] || die "usage: hack/node.sh import ARCHIVE"
  # Images named without a registry are docker.io/library/... to the CRI: keep both names.
  local out name
  out="$(ctr_ images import --no-unpack=false "$1")"
  for name in $(ctr_ images ls -q); do
    case "$name" in
      *:*/*|docker.io/*|localhost/*|sha256:*) ;;
      *) ctr_ images tag --force "$name" "docker.io/library/$name" >/dev/null ;;
    esac
  done
  echo "$out"
}

stop_pid() { # <name>: TERM, then KILL
  local pid
  [ -f "$RUN/$1.pid" ] || return 0
  pid="$(cat "$RUN/$1.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$1.pid"
}

cmd_down() {
  # Best effort, every step: what one step cannot remove must not stop the others.
  trap - ERR
  set +e
  # Only a plane started with a node owns one: another plane's `down` (say `make run`'s, beside
  # `make test`'s) must not touch it. (One node per machine: the bridge and its addresses are
  # fixed.)
  if [ ! -d "$RUN" ] && [ ! -f "$PLANE_RUN/with-node" ]; then say "not running"; return 0; fi
  stop_pid kube-scheduler
  stop_pid kubelet
  # Every pod's processes (the shims outlive containerd), then containerd.
  if alive containerd; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
  fi
  pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io .*-address $RUN/containerd/containerd.sock" 2>/dev/null || true
  stop_pid containerd
  stop_pid kube-proxy
  if [ -x "$(plane_bin)/kube-proxy" ]; then
    "$(plane_bin)/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  remove_kube_rules
  # Mounts under the node's directory (pod volumes, rootfs, shm), deepest first.
  local mount
  awk -v run="$RUN" 'index($2, run) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
  # The pods' network namespaces (containerd names them cni-<uuid>).
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NETNS_PREFIX" || true); do
    ip netns delete "$ns" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  rm -rf "$RUN"
  say "stopped"
}

# kube-proxy's and kubelet's iptables rules (KUBE-* chains and the jumps into them), in every
# table, IPv4 and IPv6: what `kube-proxy --cleanup` leaves (kubelet's canaries and firewall).
remove_kube_rules() {
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A [^ ]+ .*-j KUBE-' | sed 's/^-A /-D /' |
        while read -r rule; do eval "$cmd -t $table $rule" 2>/dev/null || true; done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

cmd_leftovers() {
  trap - ERR
  local found=0
  for name in kubelet containerd kube-proxy kube-scheduler; do
    if alive "$name"; then echo "process: $name"; found=1; fi
  done
  if pgrep -f "containerd-shim-runc-v2 .*$RUN" >/dev/null; then echo "process: containerd-shim"; found=1; fi
  if awk -v run="$RUN" 'index($2, run) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    echo "mounts under $RUN"; found=1
  fi
  if ip netns list 2>/dev/null | grep "^$NETNS_PREFIX" >/dev/null; then echo "network namespaces: cni-*"; found=1; fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "interface: $BRIDGE"; found=1; fi
  if ip -br link | grep '^veth' >/dev/null; then echo "interfaces: veth*"; found=1; fi
  if iptables-save 2>/dev/null | grep 'KUBE-' >/dev/null; then echo "iptables: KUBE-* rules"; found=1; fi
  if ip6tables-save 2>/dev/null | grep 'KUBE-' >/dev/null; then echo "ip6tables: KUBE-* rules"; found=1; fi
  return "$found"
}

case "${1:-}" in
  bridge) cmd_bridge ;;
  up) cmd_up ;;
  import) shift; cmd_import "$@" ;;
  down) cmd_down ;;
  leftovers) cmd_leftovers ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
