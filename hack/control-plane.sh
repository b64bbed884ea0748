#!/usr/bin/env bash
# A real Kubernetes control plane for tests and the local demo: etcd, kube-apiserver and
# kube-controller-manager, built from their published Go modules (no downloads of prebuilt
# binaries, no containers) and started on free 127.0.0.1 ports.
#
#   hack/control-plane.sh build    build the binaries into the cache (a no-op when they are there)
#   hack/control-plane.sh up       start the plane (idempotent); last line: export KUBECONFIG=...
#   ... build --node / up --node   also kubelet and kube-proxy / also a real node (hack/node.sh):
#                                  the API server then listens on the node's bridge address
#   hack/control-plane.sh down     stop exactly the recorded PIDs and remove the run directory
#   hack/control-plane.sh status   say what runs
#   hack/control-plane.sh env      print the export line of a running plane
#   hack/control-plane.sh bin-dir  print the cache directory holding the binaries (builds them first)
#   hack/control-plane.sh exec -- CMD...
#                                  run CMD with KUBECONFIG set, KUBECTL naming the kubectl
#                                  built with the plane and BBO_K8S_VERSION its version; a plane this call started is
#                                  stopped afterwards, even when CMD fails; exits with CMD's status
#   hack/control-plane.sh restart kube-apiserver
#                                  SIGKILL the API server and start it again as before (the soak)
#   hack/control-plane.sh pause etcd SECONDS
#                                  SIGSTOP a component, SIGCONT it SECONDS later (the soak)
#   hack/control-plane.sh regen    re-resolve the Go wrapper modules for NEW_K8S_VERSION /
#                                  NEW_ETCD_VERSION (into hack/$BBO_KUBE_MODULE when set)
#
# Versions come from the wrapper modules' go.mod files (hack/kube, hack/etcd), so the pinned,
# checksummed dependency graph is the single source of truth. Environment:
#   BBO_CACHE_DIR      binary cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/control-plane)
#   BBO_RUN_DIR        run directory: PIDs, logs, PKI, kubeconfig (default <repo>/.run/control-plane)
#   BBO_START_TIMEOUT  seconds to wait for each component (default 90; 2-core machines are slow)
#   BBO_KUBE_MODULE    the Kubernetes wrapper module under hack/ (default kube; make test-versions
#                      uses kube-v1.33 and kube-v1.37)
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
RUN="${BBO_RUN_DIR:-$REPO/.run/control-plane}"
START_TIMEOUT="${BBO_START_TIMEOUT:-90}"
# With --node (or BBO_NODE=1): kubelet and kube-proxy too, and a node (hack/node.sh).
NODE="${BBO_NODE:-0}"
NODE_ADDRESS=10.244.0.1
# Never let `go` fetch a toolchain of its own: machines here cannot download one.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

say() { printf 'control-plane: %s\n' "$*" >&2; }
die() { printf 'control-plane: error: %s\n' "$*" >&2; exit 1; }

module_version() { # <go.mod> <module path> -> the version the wrapper module requires
  awk -v m="$2" '$1==m && $2 ~ /^v/ {print $2; exit}' "$1"
}
# The Kubernetes wrapper module: hack/kube (the default version) or, for `make test-versions`,
# another folder of hack/ pinning another version (BBO_KUBE_MODULE=kube-v1.37).
KUBE="$HACK/${BBO_KUBE_MODULE:-kube}"
[ -f "$KUBE/go.mod" ] || [ "${1:-}" = regen ] || die "no wrapper module $KUBE (BBO_KUBE_MODULE)"
K8S_VERSION="$(module_version "$KUBE/go.mod" k8s.io/kubernetes 2>/dev/null || true)"
ETCD_VERSION="$(module_version "$HACK/etcd/go.mod" go.etcd.io/etcd/server/v3)"
[ -n "$K8S_VERSION" ] && [ -n "$ETCD_VERSION" ] || [ "${1:-}" = regen ] || die "cannot read versions from $KUBE/go.mod and $HACK/etcd/go.mod"

need() { # <command> <how to get it>
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

require_go() {
  need go "install a Go toolchain >= 1.26 (the polyglot machines ship one in /usr/local/go/bin; add it to PATH)"
  local have want
  have="$(go env GOVERSION)"; have="${have#go}"
  want="$(awk '$1=="go"{print $2; exit}' "$HACK/etcd/go.mod")"
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
    die "Go $have is too old: the wrapper modules need Go >= $want (GOTOOLCHAIN=local: no toolchain download is attempted)"
  fi
}

bin_dir() {
  local root="${BBO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bitbucket-operator/control-plane}"
  echo "$root/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_$(go env GOVERSION)_$(go env GOOS)-$(go env GOARCH)"
}

BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)

built() { # <dir>
  local b
  for b in "${BINARIES[@]}"; do [ -x "$1/$b" ] || return 1; done
}

build_kube() { # <out dir>
  local ldflags
  # Stamp the version as upstream's hack/lib/version.sh does, so /version reports the real one.
  ldflags="$(version_ldflags)"
  say "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (cold: several minutes on 2 cores)"
  (cd "$KUBE" && go build -trimpath -tags=notest -ldflags="$ldflags" -o "$1/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
}

version_ldflags() {
  local minor stamp ldflags p
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  stamp="$(date -u -d @"${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)"
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$stamp"
  done
  echo "$ldflags"
}

NODE_BINARIES=(kubelet kube-proxy kube-scheduler)

build_node() { # <plane bin dir>: kubelet, kube-proxy and kube-scheduler beside the plane's binaries
  local b staging
  [ -x "$1/kubelet" ] && [ -x "$1/kube-proxy" ] && [ -x "$1/kube-scheduler" ] && return 0
  staging="$1.node.$$"
  rm -rf "$staging"; mkdir -p "$staging"
  say "building kubelet, kube-proxy and kube-scheduler $K8S_VERSION (cold: about 4 minutes on 2 cores)"
  (cd "$KUBE" && go build -trimpath -tags=notest -ldflags="$(version_ldflags)" -o "$staging/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kube-scheduler) ||
    die "building the node's binaries failed (see the go output above)"
  for b in "${NODE_BINARIES[@]}"; do mv "$staging/$b" "$1/$b"; done
  rm -rf "$staging"
}

build_etcd() { # <out dir>
  say "building etcd $ETCD_VERSION"
  (cd "$HACK/etcd" && go build -trimpath \
    -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
    -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

cmd_build() {
  require_go
  local dir staging start
  dir="$(bin_dir)"
  mkdir -p "$(dirname "$dir")"
  exec 9>"$dir.lock"
  flock 9 # one builder per version key; a second caller waits, then finds the binaries
  if built "$dir"; then
    say "binaries present in $dir"
  else
    start=$SECONDS
    staging="$dir.partial.$$"
    rm -rf "$staging"; mkdir -p "$staging"
    # Built into a staging directory and renamed, so an interrupted build never looks complete.
    build_etcd "$staging" || die "building etcd failed (see the go output above); the Go module proxy must be reachable"
    build_kube "$staging" || die "building Kubernetes failed (see the go output above); the Go module proxy must be reachable"
    rm -rf "$dir"; mv "$staging" "$dir"
    say "built in $((SECONDS - start))s into $dir"
  fi
  [ "$NODE" = 0 ] || build_node "$dir"
  "$dir/kube-apiserver" --version >&2
  "$dir/etcd" --version | sed -n 1p >&2 # sed reads to the end: head could SIGPIPE etcd under pipefail
  flock -u 9
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

gen_pki() { # <dir>: a CA, a serving certificate (loopback, the node's bridge, the `kubernetes` Service), the service-account key pair
  local d="$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=bitbucket-operator-test-ca" -keyout "$d/ca.key" -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=kube-apiserver" -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:$NODE_ADDRESS,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" >"$d/apiserver.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/sa.key"
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
}

alive() { # <name>: the recorded process is running
  [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null
}

launch() { # <name> <binary> [args...]: start in its own session, record the PID and command
  local name="$1"; shift
  printf '%s\0' "$@" >"$RUN/$name.args"
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# Waits until <url> answers 2xx; fails fast (status 2) when <name> dies meanwhile.
wait_ready() { # <name> <url> [curl args...]
  local name="$1" url="$2"; shift 2
  local deadline=$((SECONDS + START_TIMEOUT))
  until curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; do
    alive "$name" || return 2
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

stop_component() { # <name>: SIGTERM the recorded PID, SIGKILL after 20 s
  local pid i
  [ -f "$RUN/$1.pid" ] || return 0
  pid="$(cat "$RUN/$1.pid")"
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$1.pid"
}

stop_all() {
  stop_component kube-controller-manager
  stop_component kube-apiserver
  stop_component etcd
}

# Reports a component that did not come up, with the end of its log, then cleans up.
fail_up() { # <name> <wait status>
  local why="did not become ready within ${START_TIMEOUT}s"
  [ "$2" = 2 ] && why="exited during start-up"
  printf 'control-plane: error: %s %s; last lines of %s:\n' "$1" "$why" "$RUN/$1.log" >&2
  tail -n 25 "$RUN/$1.log" >&2 || true
  local keep="${RUN}.failed"
  rm -rf "$keep"; cp -r "$RUN" "$keep" 2>/dev/null || true
  stop_all
  rm -rf "$RUN"
  say "logs kept in $keep"
  exit 1
}

plane_is_up() {
  alive etcd && alive kube-apiserver && alive kube-controller-manager && [ -f "$RUN/kubeconfig" ] &&
    curl -fsS -o /dev/null --max-time 2 --cacert "$RUN/pki/ca.crt" \
      -H "Authorization: Bearer $(cat "$RUN/token")" "$(cat "$RUN/server")/readyz" 2>/dev/null
}

write_kubeconfig() { # <server> <token>
  cat >"$RUN/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bitbucket-operator-test
  cluster:
    server: $1
    certificate-authority-data: $(base64 -w0 "$RUN/pki/ca.crt")
users:
- name: admin
  user:
    token: $2
contexts:
- name: bitbucket-operator-test
  context: {cluster: bitbucket-operator-test, user: admin, namespace: default}
current-context: bitbucket-operator-test
EOF
  chmod 600 "$RUN/kubeconfig"
}

start_once() { # <bin dir>; returns 3 when a port was taken meanwhile (caller retries)
  local bin="$1" token etcd_port peer_port api_port kcm_port server st
  rm -rf "$RUN"; mkdir -p "$RUN/pki" "$RUN/etcd-data"; chmod 700 "$RUN" "$RUN/etcd-data"
  gen_pki "$RUN/pki"
  token="$(openssl rand -hex 32)"
  echo "$token" >"$RUN/token"; chmod 600 "$RUN/token"
  printf '%s,admin,admin-uid,"system:masters"\n' "$token" >"$RUN/pki/tokens.csv"
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"; kcm_port="$(free_port)"
  # With a node, the API server listens on the node's bridge address (a local address pods
  # reach too) and keeps the `kubernetes` Service pointing there; without one, on loopback.
  # With a node, pods also get their ServiceAccount token mounted (the admission plug-in) and
  # the controllers that run workloads: Deployments, ReplicaSets, Service endpoints, disruption
  # budgets, and the publisher of the CA bundle pods verify the API server with.
  local address=127.0.0.1 reconciler=none admission=(--disable-admission-plugins=ServiceAccount)
  local controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller
  if [ "$NODE" = 1 ]; then
    "$HACK/node.sh" bridge
    address="$NODE_ADDRESS" reconciler=lease admission=()
    controllers+=",deployment-controller,replicaset-controller,endpoints-controller"
    controllers+=",endpointslice-controller,endpointslice-mirroring-controller,disruption-controller"
    controllers+=",root-ca-certificate-publisher-controller,pod-garbage-collector-controller"
    controllers+=",node-lifecycle-controller"
    touch "$RUN/with-node"
  fi
  server="https://$address:$api_port"
  echo "$server" >"$RUN/server"

  launch etcd "$bin/etcd" --name=test --data-dir="$RUN/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true --log-level=warn
  st=0; wait_ready etcd "http://127.0.0.1:$etcd_port/health" || st=$?
  [ "$st" = 0 ] || { port_taken etcd && return 3; fail_up etcd "$st"; }

  # An explicit --advertise-address: the plane works on a machine without a default route, and
  # the `kubernetes` Service never points off-host.
  launch kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$address" --secure-port="$api_port" \
    --advertise-address="$address" --endpoint-reconciler-type="$reconciler" \
    --cert-dir="$RUN/pki" --tls-cert-file="$RUN/pki/apiserver.crt" --tls-private-key-file="$RUN/pki/apiserver.key" \
    --client-ca-file="$RUN/pki/ca.crt" \
    --token-auth-file="$RUN/pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$RUN/pki/sa.pub" --service-account-signing-key-file="$RUN/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true "${admission[@]}" \
    --kubelet-preferred-address-types=InternalIP
  local auth=(--cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $token")
  st=0; wait_ready kube-apiserver "$server/readyz" "${auth[@]}" || st=$?
  [ "$st" = 0 ] || { port_taken kube-apiserver && return 3; fail_up kube-apiserver "$st"; }
  # The default namespace is created by a post-start hook shortly after /readyz.
  st=0; wait_ready kube-apiserver "$server/api/v1/namespaces/default" "${auth[@]}" || st=$?
  [ "$st" = 0 ] || fail_up kube-apiserver "$st"
  write_kubeconfig "$server" "$token"

  # Garbage collection (ownerReferences), namespace deletion and default ServiceAccounts.
  launch kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$RUN/kubeconfig" \
    --authentication-kubeconfig="$RUN/kubeconfig" --authorization-kubeconfig="$RUN/kubeconfig" \
    --controllers="$controllers" --root-ca-file="$RUN/pki/ca.crt" \
    --leader-elect=false --use-service-account-credentials=false \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$RUN/pki/kcm"
  st=0; wait_ready kube-controller-manager "https://127.0.0.1:$kcm_port/healthz" -k || st=$?
  [ "$st" = 0 ] || { port_taken kube-controller-manager && return 3; fail_up kube-controller-manager "$st"; }
}

port_taken() { grep -qi 'address already in use' "$RUN/$1.log" 2>/dev/null; }

cmd_up() {
  need openssl "apt-get install -y openssl"
  need curl "apt-get install -y curl"
  need python3 "apt-get install -y python3"
  need setsid "apt-get install -y util-linux"
  if plane_is_up; then
    if [ "$NODE" = 1 ] && [ ! -f "$RUN/with-node" ]; then
      die "the plane is up without a node: stop it first (hack/control-plane.sh down)"
    fi
    [ "$NODE" = 0 ] || "$HACK/node.sh" up
    say "already up ($(cat "$RUN/server"))"
    echo "export KUBECONFIG=$RUN/kubeconfig"
    return 0
  fi
  if [ -d "$RUN" ]; then say "cleaning up a stale run directory"; stop_all; rm -rf "$RUN"; fi
  cmd_build
  local bin attempt st start=$SECONDS
  bin="$(bin_dir)"
  for attempt in 1 2 3; do
    st=0; start_once "$bin" || st=$?
    [ "$st" = 0 ] && break
    say "a port was taken while starting (attempt $attempt); retrying on new ports"
    stop_all
  done
  [ "$st" = 0 ] || { stop_all; rm -rf "$RUN"; die "could not find free ports after 3 attempts"; }
  if [ "$NODE" = 1 ]; then
    "$HACK/node.sh" up || { cmd_down; die "the node did not come up"; }
  fi
  say "up in $((SECONDS - start))s: $(cat "$RUN/server") (kube-apiserver $K8S_VERSION, etcd $ETCD_VERSION); logs in $RUN"
  echo "export KUBECONFIG=$RUN/kubeconfig"
}

cmd_down() {
  # The node first: its kubelet must not outlive the API server it reports to.
  "$HACK/node.sh" down
  if [ ! -d "$RUN" ]; then say "not running"; return 0; fi
  stop_all
  rm -rf "$RUN"
  say "stopped"
}

cmd_status() {
  local name any=0
  for name in etcd kube-apiserver kube-controller-manager; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; any=1
    elif [ -f "$RUN/$name.pid" ]; then echo "$name: dead (pid $(cat "$RUN/$name.pid")); see $RUN/$name.log"
    else echo "$name: not running"; fi
  done
  if plane_is_up; then
    echo "ready: $(cat "$RUN/server")"
    echo "export KUBECONFIG=$RUN/kubeconfig"
  elif [ "$any" = 1 ]; then
    echo "not ready"; return 1
  else
    return 3
  fi
}

# The soak's faults: the API server killed outright and started again with the same command
# line (its log goes on), a component frozen for a while.
cmd_restart() { # kube-apiserver
  [ "${1:-}" = kube-apiserver ] || die "restart: only kube-apiserver can be restarted"
  alive kube-apiserver || die "restart: kube-apiserver is not running"
  local pid args=()
  pid="$(cat "$RUN/kube-apiserver.pid")"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  mapfile -d '' args <"$RUN/kube-apiserver.args"
  setsid "${args[@]}" >>"$RUN/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$RUN/kube-apiserver.pid"
  wait_ready kube-apiserver "$(cat "$RUN/server")/readyz" --cacert "$RUN/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$RUN/token")" || die "restart: kube-apiserver did not come back"
}

cmd_pause() { # <name> <seconds>
  local name="${1:-}" seconds="${2:-}"
  [[ "$seconds" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "pause: give a component and a number of seconds"
  alive "$name" || die "pause: $name is not running"
  local pid; pid="$(cat "$RUN/$name.pid")"
  kill -STOP "$pid"
  sleep "$seconds"
  kill -CONT "$pid"
}

cmd_env() {
  plane_is_up || die "the control plane is not up: run 'hack/control-plane.sh up'"
  echo "export KUBECONFIG=$RUN/kubeconfig"
}

cmd_exec() { # [--node] -- CMD...
  [ "${1:-}" = "--" ] && shift
  [ "$#" -gt 0 ] || die "usage: hack/control-plane.sh exec -- CMD..."
  local started=0 line rc=0
  if ! plane_is_up; then
    started=1
    # Stop on every exit path (failure, Ctrl-C, TERM) so no process outlives the run.
    trap 'cmd_down' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  line="$(cmd_up | tail -n1)"
  export KUBECONFIG="${line#export KUBECONFIG=}"
  export KUBECTL="$(bin_dir)/kubectl"
  export BBO_K8S_VERSION="$K8S_VERSION"
  "$@" || rc=$?
  [ "$started" = 1 ] || say "leaving the plane up: it was up before this run"
  exit "$rc"
}

cmd_regen() { # K8S_VERSION=v1.35.x ETCD_VERSION=v3.6.x hack/control-plane.sh regen
  require_go
  local k="${NEW_K8S_VERSION:?set NEW_K8S_VERSION, e.g. v1.35.4}" e="${NEW_ETCD_VERSION:-$ETCD_VERSION}"
  mkdir -p "$KUBE"
  local staging="v0.${k#v1.}" gomod m
  export GOFLAGS="${GOFLAGS/-mod=readonly/}"
  go mod download "k8s.io/kubernetes@$k"
  gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$k.mod"
  {
    sed -n '1,2p' "$HACK/kube/go.mod"
    echo "module bitbucket-operator.local/hack/kube"; echo
    awk '$1=="go"{print; exit}' "$gomod"; echo
    awk '$1=="godebug"{print; exit}' "$gomod"; echo
    echo "replace ("
    awk '$2=="=>" && $3 ~ /^\.\/staging\/src\// {print $1}' "$gomod" | sort -u |
      while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
    echo ")"
  } >"$KUBE/go.mod.new"
  mv "$KUBE/go.mod.new" "$KUBE/go.mod"; rm -f "$KUBE/go.sum"
  (cd "$KUBE" && go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$k" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@$k" "k8s.io/kubernetes/cmd/kubectl@$k" \
    "k8s.io/kubernetes/cmd/kubelet@$k" "k8s.io/kubernetes/cmd/kube-proxy@$k")
  (cd "$HACK/etcd" && go get -tool "go.etcd.io/etcd/server/v3@$e")
  say "wrapper modules now pin Kubernetes $k and etcd $e"
}

command="${1:-}"
[ "$#" = 0 ] || shift
if [ "${1:-}" = --node ]; then NODE=1; shift; fi
export BBO_NODE="$NODE"

case "$command" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  bin-dir) cmd_build; bin_dir ;;
  bin-path) bin_dir ;; # without building (for hack/node.sh)
  regen) cmd_regen ;;
  exec) cmd_exec "$@" ;;
  restart) cmd_restart "$@" ;;
  pause) cmd_pause "$@" ;;
  *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
