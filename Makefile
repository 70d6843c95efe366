# replikv developer commands. `make up` runs the local cluster; `make test` runs
# every check CI runs. See README.md.

CARGO      ?= cargo
WASM_TARGET = wasm32-wasip1
WASM        = target/$(WASM_TARGET)/release/replikv_filter.wasm
# Envoy: $ENVOY_BIN if set, else `envoy` on PATH, else the pinned release that
# scripts/install-envoy.sh fetches into .envoy/.
ENVOY_BIN  ?= $(shell command -v envoy 2>/dev/null || echo $(CURDIR)/.envoy/bin/envoy)
export ENVOY_BIN

# A throwaway secret for checks that load the filter; `make up` makes its own.
CHECK_SECRET = replikv-check-secret-0123456789

.PHONY: up build build-wasm envoy test lint fmt-check clippy unit validate e2e clean

include mk/compose.mk
include mk/bench.mk

up: build envoy
	REPLIKV_BACKEND_BIN=$(CURDIR)/target/release/kv-backend REPLIKV_WASM=$(CURDIR)/$(WASM) \
		exec target/release/replikv-up $(UP_ARGS)

build: build-wasm
	$(CARGO) build --release -p replikv-kv-backend -p replikv-cluster

build-wasm:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	$(CARGO) build --release -p replikv-filter --target $(WASM_TARGET)

envoy:
	@test -x "$(ENVOY_BIN)" || scripts/install-envoy.sh >/dev/null
	@"$(ENVOY_BIN)" --version | grep -q '/1\.40\.' || echo "warning: $(ENVOY_BIN) is not Envoy 1.40"

# Everything: lint, unit tests, Envoy config validation, the end-to-end tests
# on 127.0.0.1, and the container harness (needs a running Docker:
# `make compose-prereqs` installs and starts it).
test: lint unit validate e2e compose-test

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: build-wasm
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p replikv-filter --target $(WASM_TARGET) -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

# Every Envoy config, as the local cluster and compose render it, checked by
# Envoy itself with the real filter loaded.
validate: build-wasm envoy
	@rm -rf target/envoy-validate
	$(CARGO) run -q -p replikv-cluster --bin replikv-up -- --replicas 2 --min-replica-acks 1 render --target local \
		--wasm $(CURDIR)/$(WASM) --out target/envoy-validate/local >/dev/null
	$(CARGO) run -q -p replikv-cluster --bin replikv-up -- --replicas 2 render --target compose \
		--wasm $(CURDIR)/$(WASM) --out target/envoy-validate/compose >/dev/null
	@for config in target/envoy-validate/*/*.yaml; do \
		REPLIKV_SECRET=$(CHECK_SECRET) "$(ENVOY_BIN)" --mode validate -c $$config --log-level warn >/dev/null 2>target/envoy-validate/last.log \
			&& echo "envoy --mode validate $$config: OK" \
			|| { cat target/envoy-validate/last.log; echo "envoy --mode validate $$config: FAILED"; exit 1; }; \
	done

# Integration tests of each crate, then the end-to-end tests against real
# Envoys and kv-backends.
e2e: build-wasm envoy
	$(CARGO) build -p replikv-kv-backend
	REPLIKV_BACKEND_BIN=$(CURDIR)/target/debug/kv-backend REPLIKV_WASM=$(CURDIR)/$(WASM) \
		$(CARGO) test --workspace --test '*' -- --test-threads 2

clean:
	$(CARGO) clean
	rm -rf .run
