#!/usr/bin/env python3
"""`make bench-profile`: the experiments behind the benchmark's profile findings.

1. Reads straight to ONE node, four variants taking turns run by run: the node
   without a filter; with a do-nothing Rust proxy-wasm filter
   (bench/trivial-filter) and with replikv's filter, both run on every read
   (the read routes cut out: filter_on_reads_on_primary); and replikv as
   shipped, where reads skip the Wasm filter. Server CPU per request by
   process, and `perf record` of the node's Envoy split by DSO: the Envoy binary
   (its C++ and the V8 runtime; the official build has no symbols), the kernel,
   and `[JIT]`, the filter's own compiled Wasm code.
2. Writes straight to the primary node, without and with the filter (which
   replicates): the same split, plus the kv-backends' top symbols.
3. Replication lag against the write rate (BENCH_LAG_RATES, default 50,300,1000
   writes/s), and the latency of one lone commit (fsync) of the kv-backend.

Same pinning and settings as bench.py (BENCH_DURATION, BENCH_RUNS, ...).
Writes bench-results/profile-<stamp>.md and .json. Python stdlib + perf.
"""

import datetime
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

TRIVIAL = bench.ROOT / "target/bench-trivial-filter/wasm32-wasip1/release/bench_trivial_filter.wasm"


def build_trivial():
    subprocess.run(
        [
            "cargo",
            "build",
            "-q",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
            str(bench.BENCH / "trivial-filter/Cargo.toml"),
            "--target-dir",
            str(bench.ROOT / "target/bench-trivial-filter"),
        ],
        check=True,
        timeout=600,
    )


def perf_dso(settings, pid, seconds, output):
    """Samples `pid` at 2 kHz for `seconds`; returns a Popen to wait for."""
    return subprocess.Popen(
        ["perf", "record", "-F", "2000", "-o", str(output), "-p", str(pid), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, settings.client_cpus),
    )


def dso_split(data, requests, sort="dso", limit=8):
    """[(name, µs per request)] from a perf file, biggest first."""
    out = subprocess.run(
        ["perf", "report", "--stdio", "--no-children", "-i", str(data), "--sort", sort, "-g", "none"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith("# Event count"):
            total = int(line.split()[-1])
    rows = []
    for line in out.splitlines():
        if line.startswith("#") or "%" not in line[:10]:
            continue
        pct, _, name = line.strip().partition("%")
        try:
            share = float(pct) / 100
        except ValueError:
            continue
        name = " ".join(name.split())
        if name.startswith("[JIT]"):
            name = "[JIT] (filter Wasm code)"
        rows.append((name, share * total / 1000 / max(1, requests)))  # cpu-clock is in ns
    return rows[:limit]


# Reads skip the Wasm filter on the nodes (route `typed_per_filter_config`
# in envoy/*.yaml.j2). To measure what the filter would cost them, variants
# "trivial filter" and "replikv, filter on reads" restart the primary's Envoy
# with those read routes cut out, so every request runs the filter.
READ_ROUTES_START = "              # Reads (GET, HEAD) change nothing"
READ_ROUTES_END = "              # Writes, and anything else, go through the filter."


def filter_on_reads_on_primary(t):
    """Restarts the primary node's Envoy without its read routes."""
    env = next(p for p in t.procs if p.name == "primary.envoy")
    env.stop()
    t.procs.remove(env)
    if env in bench.STARTED:
        bench.STARTED.remove(env)
    config = t.dir / "envoy" / "primary.yaml"
    text = config.read_text()
    if READ_ROUTES_START not in text or READ_ROUTES_END not in text:
        raise RuntimeError("primary.yaml changed shape: cannot cut out its read routes")
    head, rest = text.split(READ_ROUTES_START, 1)
    text = head + rest.split(READ_ROUTES_END, 1)[1].lstrip("\n")
    config.write_text(text)
    t.envoy("primary", config)
    admin = int(text.split("port_value: ", 1)[1].split()[0])
    bench.wait_envoy(admin, t.ports["primary"], t.procs)


def one_node(settings, work, mode, variants):
    """Interleaved runs straight to the primary node of each variant."""
    topos = {}
    real_wasm = settings.wasm
    original_wait_key = bench.Topology.wait_key
    try:
        for name, kind in variants:
            if kind == "none":
                topos[name] = bench.start_envoy_cluster(settings, work, f"{mode}-{name}", filter=False)
            elif kind == "trivial":
                # The trivial filter does not replicate: seed the replica directly.
                settings.wasm = TRIVIAL
                bench.Topology.wait_key = lambda self, port, key: self.seed(port)
                topos[name] = bench.start_envoy_cluster(settings, work, f"{mode}-{name}")
                bench.Topology.wait_key = original_wait_key
                settings.wasm = real_wasm
                filter_on_reads_on_primary(topos[name])
            elif kind == "filter-on-reads":
                topos[name] = bench.start_envoy_cluster(settings, work, f"{mode}-filter-on-reads")
                filter_on_reads_on_primary(topos[name])
            else:
                topos[name] = bench.start_envoy_cluster(settings, work, f"{mode}-{name}")
        for name, t in topos.items():
            arg = settings.keys if mode == "read" else f"{name}w"
            bench.wrk(settings, t.ports["primary"], mode, arg, settings.warmup)
        runs = {name: [] for name in topos}
        for i in range(settings.runs):
            for name, t in topos.items():
                arg = settings.keys if mode == "read" else f"{name}r{i}"
                r = bench.measured(settings, t, t.ports["primary"], mode, arg, settings.duration)
                runs[name].append(r)
                print(f"  {mode} {name} run {i + 1}: {r['rps']:.0f} req/s", flush=True)
        profiles = {}
        for name, t in topos.items():
            env = next(p for p in t.procs if p.name == "primary.envoy")
            backend = next(p for p in t.procs if p.name == "primary.kv-backend")
            data = work / f"perf-{mode}-{name}.data"
            bdata = work / f"perf-{mode}-{name}-backend.data"
            seconds = max(1, settings.duration - 1)
            recorders = [perf_dso(settings, env.pid, seconds, data)]
            if mode == "write":
                recorders.append(perf_dso(settings, backend.pid, seconds, bdata))
            arg = settings.keys if mode == "read" else f"{name}p"
            r = bench.measured(settings, t, t.ports["primary"], mode, arg, settings.duration)
            for rec in recorders:
                rec.wait(60)
            # perf sampled `seconds` of the run: scale the request count.
            requests = r["requests"] * seconds / settings.duration
            profiles[name] = {"envoy_by_dso_us": dso_split(data, requests)}
            if mode == "write":
                profiles[name]["backend_top_symbols_us"] = dso_split(
                    bdata, requests, sort="sym", limit=12
                )
        return runs, profiles
    finally:
        bench.Topology.wait_key = original_wait_key
        settings.wasm = real_wasm
        for t in topos.values():
            t.stop()


def summarize(runs):
    out = {}
    for name, rs in runs.items():
        med = bench.median_of(rs)
        out[name] = {
            "rps": med["rps"],
            "p99_ms": med["latency_ms"]["p99"],
            "cpu_us_per_request": med["cpu_us_per_request"],
            "by_process": {
                k: v for k, v in med["cpu_us_per_request_by_process"].items() if v >= 0.5
            },
        }
    return out


def lone_commits(settings, work, count=300):
    t = bench.start_backend_alone(settings, work, "lone-commits")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", t.ports["lb"], timeout=5)
        lat = []
        for i in range(count):
            started = time.monotonic()
            conn.request(
                "POST",
                bench.ZONE_PATH,
                body=json.dumps({f"lone{i}": "x"}),
                headers={"Content-Type": "application/json"},
            )
            conn.getresponse().read()
            lat.append((time.monotonic() - started) * 1000)
        lat.sort()
        pick = lambda q: lat[min(len(lat) - 1, int(q / 100 * len(lat)))]
        return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": lat[-1]}
    finally:
        t.stop()


def lag_sweep(settings, work, rates):
    out = []
    for rate in rates:
        t = bench.start_envoy_cluster(settings, work, f"lag-{rate}")
        try:
            os.environ["BENCH_L1_RATE"] = str(rate)
            lag = bench.run_lag(settings, t, None)
            check = bench.replication_check(t)
        finally:
            os.environ.pop("BENCH_L1_RATE", None)
            t.stop()
        p = lag["probe"]
        row = {
            "rate": rate,
            "achieved": lag["achieved_rps"],
            "lag_ms": p["lag_ms"],
            "samples": p["samples"],
            "missing": p["missing"],
            "replica_commits": check.get("replica_commits"),
            "replica_seq": check.get("replica_seq"),
            "shadow_sent": check.get("shadow.sent"),
            "shadow_ok": check.get("shadow.ok"),
            "server_core_use": lag["server_core_use"],
            "cpu_us_per_write": lag["cpu_us_per_write"],
            "cpu_us_per_write_by_process": lag["cpu_us_per_write_by_process"],
        }
        out.append(row)
        print(
            f"  lag at {rate} w/s: p50 {bench.fmt(p['lag_ms']['p50'])} ms,"
            f" p99 {bench.fmt(p['lag_ms']['p99'])} ms",
            flush=True,
        )
    return out


def markdown(doc):
    lines = [
        f"# replikv profile, {doc['date']}",
        "",
        f"Load average before / after: {doc['load_before']} / {doc['load_after']}.",
        "Servers on CPU 1, load on CPU 0; µs are server CPU per request (medians of"
        f" {doc['runs']} runs); `[JIT]` is the filter's compiled Wasm, `envoy` the Envoy"
        " binary (its C++ and V8's runtime: no symbols in the official build).",
        "",
    ]
    for mode in ("read", "write"):
        section = doc.get(mode)
        if not section:
            continue
        lines += [
            f"## {mode}s straight to the primary node",
            "",
            "| variant | req/s | p99 ms | server CPU µs/req | by process (µs/req) |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for name, s in section["summary"].items():
            by = ", ".join(f"{k} {v:.1f}" for k, v in s["by_process"].items())
            lines.append(
                f"| {name} | {s['rps']:,.0f} | {s['p99_ms']:.2f} | {s['cpu_us_per_request']:.1f} | {by} |"
            )
        lines += ["", "Primary Envoy, perf by DSO (µs per request):", ""]
        for name, p in section["profiles"].items():
            lines.append(
                f"- {name}: " + ", ".join(f"{d} {v:.1f}" for d, v in p["envoy_by_dso_us"])
            )
        for name, p in section["profiles"].items():
            if "backend_top_symbols_us" in p:
                lines.append(
                    f"- {name}, primary kv-backend top symbols: "
                    + ", ".join(f"`{d}` {v:.1f}" for d, v in p["backend_top_symbols_us"])
                )
        lines.append("")
    if "lone_commit_ms" in doc:
        c = doc["lone_commit_ms"]
        lines += [
            "## Replication lag against the write rate",
            "",
            f"One lone write (one commit, one fsync) on the kv-backend: p50 {c['p50']:.2f} ms,"
            f" p90 {c['p90']:.2f} ms, p99 {c['p99']:.2f} ms.",
            "",
            "Server CPU per write (every server process, the lag probe's writes included)"
            " against the rate: what a write costs when the servers sleep between writes"
            " compared with when they never do.",
            "",
            "| writes/s | achieved | lag p50 ms | p90 | p99 | max | replica commits / writes"
            " | shadow requests / writes | server core use | server CPU µs/write | by process (µs/write) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
        ]
        for r in doc["lag"]:
            l = r["lag_ms"]
            per = ", ".join(
                f"{n} {v:.0f}"
                for n, v in sorted(r.get("cpu_us_per_write_by_process", {}).items(), key=lambda kv: -kv[1])
            )
            lines.append(
                f"| {r['rate']} | {r['achieved']:.0f} | {bench.fmt(l['p50'])} | {bench.fmt(l['p90'])}"
                f" | {bench.fmt(l['p99'])} | {bench.fmt(l['max'])} | {r['replica_commits']} / {r['replica_seq']}"
                f" | {r['shadow_sent']} / {r['shadow_ok']} | {bench.fmt(r.get('server_core_use'))}"
                f" | {bench.fmt(r.get('cpu_us_per_write'), 0)} | {per} |"
            )
    return "\n".join(lines) + "\n"


def main():
    settings = bench.Settings()
    bench.check_tools(settings)
    if not shutil.which("perf"):
        sys.exit("profile: perf not found")
    build_trivial()
    os.sched_setaffinity(0, settings.client_cpus)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = settings.out / f"profile-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    bench.snapshot_binaries(settings, work)
    rates = [int(r) for r in os.environ.get("BENCH_LAG_RATES", "50,300,1000").split(",") if r]
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(open("/proc/loadavg").read().split()[:3]),
        "runs": settings.runs,
    }
    try:
        print("reads straight to one node: no filter, trivial filter, filter on reads, replikv", flush=True)
        runs, profiles = one_node(
            settings,
            work,
            "read",
            [
                ("no filter", "none"),
                ("trivial filter", "trivial"),
                ("replikv, filter on reads", "filter-on-reads"),
                ("replikv", "replikv"),
            ],
        )
        doc["read"] = {"summary": summarize(runs), "profiles": profiles}
        print("writes straight to the primary: no filter, replikv", flush=True)
        runs, profiles = one_node(settings, work, "write", [("no filter", "none"), ("replikv", "replikv")])
        doc["write"] = {"summary": summarize(runs), "profiles": profiles}
        print("lag against the write rate", flush=True)
        doc["lone_commit_ms"] = lone_commits(settings, work)
        doc["lag"] = lag_sweep(settings, work, rates)
    finally:
        bench.stop_all()
    doc["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    (settings.out / f"profile-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    report = markdown(doc)
    (settings.out / f"profile-{stamp}.md").write_text(report)
    print()
    print(report)
    print(f"profile: {settings.out / f'profile-{stamp}.md'}")


if __name__ == "__main__":
    main()
