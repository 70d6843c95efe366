# `make bench`: replikv measured against Envoy alone, against no filter, against
# the article's design on nginx, and the kv-backend alone (issue 6). See
# bench/README.md. Bounded (about 5 minutes), 127.0.0.1 only; results go to
# bench-results/ (git-ignored). Settings: BENCH_* variables (bench/bench.py).

.PHONY: bench bench-tools bench-profile

# Debian's wrk and nginx, installed once when missing (needs root and apt).
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { \
		echo "installing wrk and nginx with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null; \
	}

bench: build envoy bench-tools
	python3 bench/bench.py

# Where the CPU goes (about 4 minutes): one node without a filter, with a
# do-nothing Wasm filter and with replikv's, profiled with perf; lag against the
# write rate. See bench/README.md.
bench-profile: build envoy bench-tools
	python3 bench/profile.py
