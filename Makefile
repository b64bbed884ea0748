# The commands the README names. Thin wrappers: the logic lives in hack/ and in cargo.
SHELL := /bin/bash
CARGO ?= cargo
PLANE := hack/control-plane.sh

.PHONY: all build crds test check fmt fmt-check clippy plane cluster-up cluster-down cluster-status run clean

all: build

build:
	$(CARGO) build --locked

## Every test: formatting, lints, then unit and integration tests against a real control plane
## (built from source on first use, started for the run, stopped afterwards even on failure).
test: fmt-check clippy plane
	$(PLANE) exec -- $(CARGO) test --locked --all-targets

## Regenerate crds/ from the Rust types in src/api (a test fails when they drift).
crds:
	@mkdir -p crds
	$(CARGO) run --quiet --locked -- crds --output-dir crds

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

## Build etcd, kube-apiserver, kube-controller-manager and kubectl into the cache (no-op when there).
plane:
	$(PLANE) build

cluster-up:
	$(PLANE) up

cluster-down:
	$(PLANE) down

cluster-status:
	$(PLANE) status

## The local demo. For now: a running control plane and how to use it.
run: plane
	@$(PLANE) up
	@echo
	@echo "The control plane is up. To use it:"
	@echo "  eval \"\$$($(PLANE) env)\""
	@echo "  \"\$$($(PLANE) bin-dir 2>/dev/null)/kubectl\" get namespaces"
	@echo "Stop it with: make cluster-down"

clean: cluster-down
	$(CARGO) clean
