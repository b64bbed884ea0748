# The commands the README names. Thin wrappers: the logic lives in hack/ and in cargo.
SHELL := /bin/bash
CARGO ?= cargo
PLANE := hack/control-plane.sh

# Toolchains that these machines install off the default PATH (Go in /usr/local/go, rustup's
# cargo in ~/.cargo/bin): found without a step a newcomer must know about.
export PATH := $(PATH)$(foreach dir,/usr/local/go/bin $(HOME)/.cargo/bin,$(if $(wildcard $(dir)),:$(dir)))

.PHONY: all prerequisites build install image image-binary bench bench-quick heap-profile heap-profiler crds test test-versions soak fuzz check fmt fmt-check clippy plane gitops cluster-up cluster-down cluster-status run run-down clean

all: build

## What make run and make test need and the machine lacks (Debian packages, the musl target):
## installed by hack/prerequisites.sh, which takes well under a second when nothing is missing.
## Every target below that needs more than cargo depends on it.
prerequisites:
	@hack/prerequisites.sh

build:
	$(CARGO) build --locked --workspace

## Every test: formatting, lints, then unit and integration tests against a real control plane
## (built from source on first use, started for the run, stopped afterwards even on failure).
## --workspace: the operator and the Bitbucket simulator (crates/bitbucket-sim) alike.
## The plane runs with a real node (kubelet, containerd) for tests/node.rs, which installs the
## image `make image` builds.
## The plugin is a crate of its own, so its binary is built first for tests/it/plugin.rs. The
## tests that change the plane for every other test (tests/it/exclusive.rs: the soak restarts
## the API server, the node test uninstalls the CRDs) run after the others, one at a time.
EXCLUSIVE_TESTS := $(CARGO) test --locked --test it -- exclusive:: --test-threads=1
test: prerequisites fmt-check clippy plane image gitops
	$(CARGO) build --locked --workspace --bins
	$(PLANE) exec --node -- bash -c '$(CARGO) test --locked --workspace --all-targets -- --skip exclusive:: && $(EXCLUSIVE_TESTS)'
	@# A plane this run started is down again: its node must have left nothing behind.
	@if ! $(PLANE) status >/dev/null 2>&1; then \
	  hack/node.sh leftovers || { echo "make test: the node's down left the above behind" >&2; exit 1; }; \
	fi

## The chaos soak (tests/soak.rs) at full scale (50 integrations, 300 Subscriptions) for
## SOAK_SECONDS of overlapping faults, after every property test with PROPTEST_CASES cases.
## make test runs the same soak for 120 s at a small scale. SOAK_SEED replays a run's faults.
## Prints a report, also written to target/soak/report.md.
SOAK_SECONDS ?= 600
PROPTEST_CASES ?= 20000
soak: prerequisites plane image-binary
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --locked --workspace --lib --bins
	$(PLANE) exec -- env SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --locked --test it -- --nocapture exclusive::soak::the_operator_keeps_its_promises

## The long run of every property test (make test runs each with proptest's 256 cases): what
## Bitbucket, a webhook sender or Argo CD may send, against the paging parsers and bounds, the
## generator's request reader, the sanitiser and the rest, FUZZ_CASES cases each. A failure
## prints the smallest input that fails; proptest keeps it in proptest-regressions/ to replay.
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --locked --workspace --lib --bins --release

## gitops-check (hack/gitops): kstatus and Argo CD's own health and plugin-client code, which the
## tests run against the operator's objects and endpoints; built once per version into the cache.
gitops: prerequisites
	hack/gitops.sh build >/dev/null

## The whole suite again on the oldest and newest Kubernetes minors k8s-openapi 0.29 supports
## (1.33 and 1.37; make test runs the default, 1.35): each plane and node is built from its own
## wrapper module (hack/kube-v1.33, hack/kube-v1.37) and cached. Prints one line per version.
KUBE_VERSIONS ?= kube-v1.33 kube-v1.37
test-versions: prerequisites fmt-check clippy image gitops
	@for module in $(KUBE_VERSIONS); do \
	  BBO_KUBE_MODULE=$$module $(PLANE) build --node || exit 1; \
	done
	@summary=""; status=0; \
	for module in $(KUBE_VERSIONS); do \
	  log="$$(mktemp)"; \
	  BBO_KUBE_MODULE=$$module $(PLANE) exec --node -- bash -c '$(CARGO) test --locked --workspace --all-targets --no-fail-fast -- --skip exclusive::; first=$$?; $(EXCLUSIVE_TESTS); exit $$(( first || $$? ))' 2>&1 | tee "$$log"; \
	  result=$${PIPESTATUS[0]}; [ "$$result" = 0 ] || status=1; \
	  counts="$$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } END { printf "%d passed, %d failed", p, f }' "$$log")"; \
	  summary="$$summary$$module: $$counts (exit $$result)\n"; rm -f "$$log"; \
	done; \
	printf "test-versions:\n$$summary"; exit $$status

## The kubectl plugin (kubectl bitbucket ...) onto PATH, through cargo install (~/.cargo/bin).
install:
	$(CARGO) install --locked --path crates/kubectl-bitbucket

## The operator's image, FROM scratch around a static release binary (buildah, or docker);
## also exported as an OCI archive in target/image/. Pulls nothing.
image: prerequisites
	hack/image.sh build

## Just the static binary the Dockerfile copies (for `docker build .` elsewhere).
image-binary: prerequisites
	hack/image.sh binary

## Regenerate crds/ from the Rust types in crates/api (a test fails when they drift).
crds:
	@mkdir -p crds charts/bitbucket-operator/crds charts/bitbucket-operator/templates
	$(CARGO) run --quiet --locked -p bitbucket-operator --bin bitbucket-operator -- crds --output-dir crds --chart-dir charts/bitbucket-operator

## Benchmarks on the local plane + simulator (bench-quick about 1 min after the release build;
## bench adds the heap profile of figure 7, about 15 min); prints a table and writes
## target/bench/report.md.
bench: prerequisites plane image heap-profiler
	$(PLANE) exec --node -- env BBO_BENCH_OPERATOR=$(IMAGE_BINARY) BBO_BENCH_HEAP_PROFILER=$(HEAP_PROFILER) $(CARGO) bench --locked -p bitbucket-operator --bench operator

## Figures 6, 7 and 11 run the binary the image holds (static, musl), as deployed.
IMAGE_BINARY = $(CURDIR)/target/image/bitbucket-operator

## Where the operator's memory goes: figures 6 and 7 again with a build that profiles its heap
## (dhat, `--features heap-profile`), whose rows name what holds the heap idle and with the load.
HEAP_PROFILER = $(CURDIR)/target/heap-profile/bitbucket-operator
heap-profiler:
	$(CARGO) build --locked --profile heap-profile --features heap-profile --bin bitbucket-operator

heap-profile: prerequisites plane heap-profiler
	$(PLANE) exec -- env BBO_BENCH_HEAP_PROFILER=$(HEAP_PROFILER) $(CARGO) bench --locked -p bitbucket-operator --bench operator -- --only 7

bench-quick: prerequisites plane image
	$(PLANE) exec --node -- env BBO_BENCH_OPERATOR=$(IMAGE_BINARY) $(CARGO) bench --locked -p bitbucket-operator --bench operator -- --quick

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## Build etcd, kube-apiserver, kube-controller-manager, kubectl and the node's kubelet,
## kube-proxy and kube-scheduler into the cache (no-op when there).
plane: prerequisites
	$(PLANE) build --node

cluster-up: prerequisites
	$(PLANE) up

cluster-down:
	$(PLANE) down

cluster-status:
	$(PLANE) status

## The local demo: control plane, CRDs, Bitbucket simulator, operator and example resources,
## with their status printed; runs until Ctrl-C (or `make run-down`).
run: prerequisites
	hack/demo.sh

run-down:
	hack/demo.sh down

clean: cluster-down
	$(CARGO) clean
