#!/usr/bin/env bash
# The one-command local demo (`make run`): a control plane built from source, the CRDs, the
# Bitbucket simulator, the operator, and demo resources; prints their status, then keeps
# everything running until Ctrl-C (or `make run-down` from another terminal).
#
#   hack/demo.sh        start and wait
#   hack/demo.sh down   stop what a running demo started
#
# Environment: BBO_DEMO_DIR, the demo's run directory (default <repo>/.run/demo); BBO_RUN_DIR,
# the control plane's (hack/control-plane.sh). Ctrl-C stops everything the demo started, also
# under a pipe (`make run | tee run.log`), whose reader dies first: tests/it/demo.rs checks.
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HACK/.." && pwd)"
RUN="${BBO_DEMO_DIR:-$REPO/.run/demo}"
NAMESPACE=demo
say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }

stop_pid() { # <pidfile>
  [ -f "$1" ] || return 0
  local pid; pid="$(cat "$1")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

down() {
  stop_pid "$RUN/operator.pid"
  stop_pid "$RUN/simulator.pid"
  local keep_plane=0
  [ -f "$RUN/plane-was-up" ] && keep_plane=1
  rm -rf "$RUN"
  if [ "$keep_plane" = 1 ]; then
    say "leaving the control plane up: it was up before the demo"
  else
    "$HACK/control-plane.sh" down
  fi
}

if [ "${1:-}" = down ]; then down; exit 0; fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # <url> <what> <pidfile>
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "$(cat "$3")" 2>/dev/null || { say "$2 exited; its log:"; tail -n 20 "$RUN/$2.log" >&2; exit 1; }
    sleep 0.1
  done
  say "$2 did not answer at $1"; exit 1
}

# Stops what was started, whatever stopped the demo. Ctrl-C under a pipe kills the reader (tee)
# too, and a write to the broken pipe would kill this script before `down` ran: so SIGPIPE is
# ignored, errors are not fatal here, and down's own output goes to a file first.
cleanup() {
  set +e
  trap '' PIPE INT TERM HUP
  echo >&2
  say "stopping"
  local log="$RUN.down.log"
  mkdir -p "$(dirname "$RUN")"
  down >"$log" 2>&1
  cat "$log" >&2
  rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

"$HACK/control-plane.sh" build
plane_was_up=0
"$HACK/control-plane.sh" status >/dev/null 2>&1 && plane_was_up=1
line="$("$HACK/control-plane.sh" up | tail -n1)"
export KUBECONFIG="${line#export KUBECONFIG=}"
KUBECTL="$("$HACK/control-plane.sh" bin-dir 2>/dev/null)/kubectl"

say "building the operator, the simulator and the kubectl plugin"
(cd "$REPO" && cargo build --locked --quiet -p bitbucket-operator -p bitbucket-sim -p kubectl-bitbucket --bins)
# Where cargo put them: target/ unless CARGO_TARGET_DIR (or a cargo config) says otherwise.
BIN="$(cd "$REPO" && cargo metadata --locked --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"
rm -rf "$RUN"; mkdir -p "$RUN"
[ "$plane_was_up" = 0 ] || touch "$RUN/plane-was-up"

sim_port="$(free_port)"
setsid "$BIN/bitbucket-sim" --listen "127.0.0.1:$sim_port" >"$RUN/simulator.out" 2>"$RUN/simulator.log" </dev/null &
echo $! >"$RUN/simulator.pid"
SIM_URL="http://127.0.0.1:$sim_port"
wait_http "$SIM_URL/rest/api/1.0/application-properties" simulator "$RUN/simulator.pid"
say "Bitbucket simulator on $SIM_URL (Cloud API $SIM_URL/2.0)"

"$KUBECTL" apply --server-side -f "$REPO/crds/" >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/bitbucketintegrations.scm.shippable.io crd/subscriptions.scm.shippable.io >/dev/null
# The policy subscription-integration-deleting takes a BitbucketIntegration as its parameter. The
# API server's admission reads new kinds every 30 s: until then it refuses every Subscription
# ("failed to configure policy: failed to find resource referenced by paramKind"). Wait for it,
# with a Subscription that is only tried (server dry run), as a script that applies Subscriptions
# right after installing crds/ must (Argo CD and Flux retry).
policies_in_force() {
  local out waited
  for waited in $(seq 0 89); do
    if out="$("$KUBECTL" create --dry-run=server -n default -f - 2>&1 <<'EOT'
apiVersion: scm.shippable.io/v1alpha1
kind: Subscription
metadata: {name: policies-in-force-probe}
spec: {integrationRef: {name: probe}, workspace: probe}
EOT
)"; then
      [ "$waited" = 0 ] || say "the API server put the admission policies in force ${waited}s after the CRDs"
      return 0
    fi
    grep -q 'failed to configure policy' <<<"$out" || { say "the probe Subscription was refused: $out"; exit 1; }
    sleep 1
  done
  say "the API server did not put the admission policies in force within 90s: $out"; exit 1
}
policies_in_force

ops_port="$(free_port)"
hook_port="$(free_port)"
# The simulator is on loopback: only the operator's own allow-list may name such a server.
setsid "$BIN/bitbucket-operator" run --allowed-servers "cloud,$SIM_URL" \
  --metrics-address "127.0.0.1:$ops_port" --health-address "127.0.0.1:$ops_port" \
  --webhook-address "127.0.0.1:$hook_port" --webhook-url "http://127.0.0.1:$hook_port" \
  >"$RUN/operator.log" 2>&1 </dev/null &
echo $! >"$RUN/operator.pid"
wait_http "http://127.0.0.1:$ops_port/readyz" operator "$RUN/operator.pid"
say "operator running (metrics: http://127.0.0.1:$ops_port/metrics, log: $RUN/operator.log)"

"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
started=$(date +%s.%N)
# acme-oauth's credential declares an expiry 20 days from now (the Expires column; a warning).
expires_at=$(date -u -d '+20 days' +%Y-%m-%dT%H:%M:%SZ)
sed -e "s#SIM_URL#$SIM_URL#g" -e "s#EXPIRES_AT#$expires_at#g" "$HACK/demo/resources.yaml" | "$KUBECTL" apply -n "$NAMESPACE" -f - >/dev/null
"$KUBECTL" wait -n "$NAMESPACE" --for=condition=Ready --timeout=120s bitbucketintegrations --all >/dev/null
"$KUBECTL" wait -n "$NAMESPACE" --for=condition=Ready --timeout=120s subscriptions --all >/dev/null
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
say "applied 5 integrations and 3 subscriptions; all Ready ${elapsed}s after kubectl apply"

echo
"$KUBECTL" get -n "$NAMESPACE" bitbucketintegrations
echo
"$KUBECTL" get -n "$NAMESPACE" subscriptions
echo
"$KUBECTL" get -n "$NAMESPACE" subscription acme-api \
  -o jsonpath='{range .status.repositories[*]}{.fullName}{"\t"}{.cloneUrls.https}{"\n"}{end}'
echo
# The whole list, however long, in RepositorySlices of up to 500 repositories each.
"$KUBECTL" get -n "$NAMESPACE" repositoryslices -l scm.shippable.io/subscription=acme-api
echo
# Webhooks: acme's workspace hook, registered by the operator; a repository created in Bitbucket
# reaches acme-api through its signed delivery, without a sync request (its interval is 10m).
"$KUBECTL" wait -n "$NAMESPACE" --for=condition=WebhooksRegistered --timeout=60s bitbucketintegration/acme >/dev/null
"$KUBECTL" get -n "$NAMESPACE" bitbucketintegration acme \
  -o jsonpath='{range .status.webhooks[*]}webhook of workspace {.owner}: {.state} {.id}, events {.events}{"\n"}{end}'
created=$(date +%s.%N)
python3 - "$SIM_URL" <<'PY'
import json, sys, urllib.request
body = json.dumps({"slug": "created-by-the-demo", "project": "API"}).encode()
request = urllib.request.Request(sys.argv[1] + "/_sim/cloud/workspaces/acme/repositories", body,
                                 {"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(request).close()
PY
listed=""
for _ in $(seq 1 300); do
  if "$KUBECTL" get -n "$NAMESPACE" subscription acme-api -o jsonpath='{.status.repositories[*].fullName}' |
    tr ' ' '\n' | grep -qx acme/created-by-the-demo; then
    listed=$(python3 -c "import time; print(f'{time.time() - $created:.2f}')")
    break
  fi
  sleep 0.1
done
if [ -n "$listed" ]; then
  echo "webhook: created acme/created-by-the-demo in Bitbucket; acme-api listed it ${listed}s later, from the signed repo:created delivery (no sync request)"
else
  echo "webhook: created acme/created-by-the-demo in Bitbucket; acme-api did not list it within 30s (see $RUN/operator.log)"
fi
cat <<EOT

Try it (in another terminal):
  export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH       # kubectl finds the kubectl-bitbucket plugin on PATH
  alias kubectl=$KUBECTL
  kubectl bitbucket list -n $NAMESPACE
  kubectl bitbucket connect mine -n $NAMESPACE --url $SIM_URL/2.0     # token: FAKE-cloud-api-token-for-jdoe
  kubectl get -n $NAMESPACE bbi,bbsub
  kubectl get -n $NAMESPACE bbrs -l scm.shippable.io/subscription=acme-api   # the whole list, in slices
  kubectl delete -n $NAMESPACE bbi acme                  # in use: refused at once, naming the Subscriptions
  kubectl annotate -n $NAMESPACE bbsub acme-api scm.shippable.io/sync-requested-at="\$(date +%s)"
  # a repository created in Bitbucket: its webhook brings it to acme-api
  curl -XPOST -H 'Content-Type: application/json' -d '{"slug": "another", "project": "API"}' $SIM_URL/_sim/cloud/workspaces/acme/repositories

Press Ctrl-C to stop everything (or run: make run-down).
EOT
if [ -n "${DEMO_EXIT_AFTER_START:-}" ]; then exit 0; fi
while kill -0 "$(cat "$RUN/operator.pid")" 2>/dev/null; do sleep 1; done
say "the operator exited; its log: $RUN/operator.log"
