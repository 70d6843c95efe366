#!/usr/bin/env python3
"""replikv benchmark (`make bench`): every scenario of issue 6 in one run.

Starts each topology on 127.0.0.1 from the release builds, drives it with
Debian's wrk (Lua script bench/wrk/kv.lua), and writes a Markdown report, a
JSON file and an SVG chart under bench-results/. Python standard library only.

Pinning: the servers (every Envoy, kv-backend and nginx process) run on
BENCH_SERVER_CPUS (default: core 1); wrk, the lag probe and this script on
BENCH_CLIENT_CPUS (default: core 0). With two cores this keeps the load
generator from stealing the servers' CPU, and makes "server CPU per request"
the figure every scenario is compared on: all server processes of a scenario
share one core, as they would share a node's cores in production.

Settings (environment variables): BENCH_DURATION (s per measured run, 5),
BENCH_WARMUP (s, 2), BENCH_RUNS (3), BENCH_CONNECTIONS (64), BENCH_THREADS (1),
BENCH_SCENARIOS (comma-separated ids, default all), BENCH_CONCURRENCY (Envoy
workers, 1), BENCH_ZONE (kv-backend zone spec, default:256m), BENCH_KEYS (keys
seeded for reads, 1000), BENCH_LAG_DURATION (s, 8), BENCH_OUT (bench-results),
BENCH_L1_RATE (L1's write rate, default half of W1's), BENCH_L1_LOW_RATE (L1's second,
low rate, default 200), BENCH_PERF (a scenario id: also `perf record -g` the servers during its last
run), ENVOY_BIN, BENCH_SERVER_CPUS, BENCH_CLIENT_CPUS.
"""

import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ZONE_PATH = "/api/9/http/keyvals/default"
VALUE = "v0123456789abcdef0123456789abcde"  # 32 bytes, as in kv.lua
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


def cpu_set(text):
    cpus = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.update(range(int(a), int(b) + 1))
        elif part.strip():
            cpus.add(int(part))
    return cpus


class Settings:
    def __init__(self):
        self.duration = env_float("BENCH_DURATION", 5)
        self.warmup = env_float("BENCH_WARMUP", 2)
        self.runs = env_int("BENCH_RUNS", 3)
        self.connections = env_int("BENCH_CONNECTIONS", 64)
        self.threads = env_int("BENCH_THREADS", 1)
        self.concurrency = env_int("BENCH_CONCURRENCY", 1)
        self.zone = os.environ.get("BENCH_ZONE", "default:256m")
        self.keys = env_int("BENCH_KEYS", 1000)
        self.lag_duration = env_float("BENCH_LAG_DURATION", 8)
        self.lag_interval = env_float("BENCH_LAG_INTERVAL", 0.02)
        self.l1_low_rate = int(env_float("BENCH_L1_LOW_RATE", 200))
        self.out = ROOT / os.environ.get("BENCH_OUT", "bench-results")
        self.perf = os.environ.get("BENCH_PERF", "")
        wanted = os.environ.get("BENCH_SCENARIOS", "")
        self.scenarios = [s.strip() for s in wanted.split(",") if s.strip()]
        online = os.sched_getaffinity(0)
        if len(online) >= 2:
            self.server_cpus = cpu_set(os.environ.get("BENCH_SERVER_CPUS", "1"))
            self.client_cpus = cpu_set(os.environ.get("BENCH_CLIENT_CPUS", "0"))
        else:
            self.server_cpus = self.client_cpus = online
        self.envoy = os.environ.get("ENVOY_BIN") or shutil.which("envoy") or str(
            ROOT / ".envoy/bin/envoy"
        )
        self.wasm = ROOT / "target/wasm32-wasip1/release/replikv_filter.wasm"
        self.backend = ROOT / "target/release/kv-backend"
        self.up = ROOT / "target/release/replikv-up"
        self.wrk = shutil.which("wrk")
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"


# --------------------------------------------------------------------------
# Processes


STARTED = []  # every Proc ever started, so that an exit path can stop them


class Proc:
    def __init__(self, name, argv, log, cpus, env=None):
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log, "ab")

        def pin():
            os.sched_setaffinity(0, cpus)

        self.popen = subprocess.Popen(
            argv,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=pin,
            start_new_session=True,
        )
        STARTED.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, grace=5.0):
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                # The whole session: nginx workers and anything else it started.
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        self.log_file.close()

    def tail(self, lines=15):
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def stop_all():
    # Balancers and proxies before backends: reverse start order.
    for proc in reversed(STARTED):
        try:
            proc.stop()
        except Exception as error:  # keep stopping the others
            print(f"bench: stopping {proc.name}: {error}", file=sys.stderr)
    STARTED.clear()


def descendants(pids):
    """`pids` and every process below them (nginx workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_ticks(pid):
    """utime + stime of a whole process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_snapshot(procs):
    """{process name: ticks}, each process with its descendants."""
    return {p.name: sum(cpu_ticks(pid) for pid in descendants([p.pid])) for p in procs}


# --------------------------------------------------------------------------
# HTTP (stdlib, never through a proxy, 127.0.0.1 only)


def http_request(port, method, path, body=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(what, check, procs, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} ended while waiting for {what}; end of {proc.log}:\n{proc.tail()}"
                )
        try:
            if check():
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.log}\n{p.tail()}" for p in procs)
            raise RuntimeError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)


def wait_http_ok(port, path, procs):
    wait_until(f"127.0.0.1:{port}{path}", lambda: http_request(port, "GET", path)[0] == 200, procs)


def wait_envoy(admin_port, port, procs):
    wait_until(
        f"Envoy admin {admin_port} /ready",
        lambda: http_request(admin_port, "GET", "/ready")[1].strip() == b"LIVE",
        procs,
    )
    wait_http_ok(port, "/api/", procs)


def ports_free(ports):
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_base(offsets):
    """A base port such that base + every offset is free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 29000, 10)
        if ports_free(base + o for o in offsets):
            return base
    raise RuntimeError("no free port range found on 127.0.0.1")


def status_of(port):
    status, body = http_request(port, "GET", "/replikv/status")
    return json.loads(body) if status == 200 else {}


# --------------------------------------------------------------------------
# Topologies. Each returns a dict with the ports scenarios aim at and the
# server processes whose CPU is counted.


class Topology:
    def __init__(self, settings, workdir, name):
        self.s = settings
        self.name = name
        self.dir = workdir / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.procs = []
        self.ports = {}
        self.secret = os.urandom(24).hex()

    def proc(self, name, argv, env=None):
        proc = Proc(name, argv, self.dir / "logs" / f"{name}.log", self.s.server_cpus, env)
        self.procs.append(proc)
        return proc

    def backend(self, name, port, extra=()):
        return self.proc(
            f"{name}.kv-backend",
            [
                str(self.s.backend),
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(self.dir / "data" / name),
                "--zone",
                self.s.zone,
                *extra,
            ],
        )

    def envoy(self, name, config):
        return self.proc(
            f"{name}.envoy",
            [
                self.s.envoy,
                "-c",
                str(config),
                "--concurrency",
                str(self.s.concurrency),
                "--disable-hot-restart",
                "--log-level",
                "info",
            ],
            env={"REPLIKV_SECRET": self.secret},
        )

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()
            if proc in STARTED:
                STARTED.remove(proc)
        self.procs = []
        # Write scenarios leave hundreds of MB of redb files behind.
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def seed(self, port):
        body = json.dumps({f"k{i}": VALUE for i in range(self.s.keys)})
        status, text = http_request(port, "POST", ZONE_PATH, body=body, timeout=10)
        if status != 201:
            raise RuntimeError(f"seeding through :{port} answered {status}: {text[:200]!r}")

    def wait_key(self, port, key):
        wait_until(
            f"key {key} readable on :{port}",
            lambda: http_request(port, "GET", f"{ZONE_PATH}?key={key}")[0] == 200,
            self.procs,
            timeout=15,
        )


def start_envoy_cluster(settings, workdir, name, filter=True, backend_args=()):
    """replikv's local topology (load balancer, primary, one replica) from the
    templates `replikv-up render` fills, with or without the filter."""
    t = Topology(settings, workdir, name)
    base = pick_base([0, 1, 2, 9000, 9001, 9002, 8001, 8002])
    lb, primary, replica = base, base + 1, base + 2
    backends = {"primary": base + 8001, "replica-1": base + 8002}
    admins = {"load-balancer": base + 9000, "primary": base + 9001, "replica-1": base + 9002}
    configs = t.dir / "envoy"
    render = [
        str(settings.up),
        "--base-port",
        str(base),
        "render",
        "--target",
        "local",
        "--wasm",
        str(settings.wasm),
        "--out",
        str(configs),
    ]
    if not filter:
        render.append("--no-filter")
    subprocess.run(render, check=True, stdout=subprocess.DEVNULL, timeout=60)
    for node, port in backends.items():
        t.backend(node, port, backend_args)
    for node, port in backends.items():
        wait_http_ok(port, "/api/", t.procs)
    nodes = [t.envoy(node, configs / f"{node}.yaml") for node in ("primary", "replica-1")]
    for node, port in (("primary", primary), ("replica-1", replica)):
        wait_envoy(admins[node], port, t.procs)
    t.envoy("load-balancer", configs / "load-balancer.yaml")
    wait_envoy(admins["load-balancer"], lb, t.procs)

    def healthy():
        _, text = http_request(admins["load-balancer"], "GET", "/clusters")
        lines = text.decode().splitlines()
        return (
            sum(
                1
                for l in lines
                if l.startswith("nodes::") and l.endswith("::health_flags::healthy")
            )
            == 2
        )

    wait_until("both nodes healthy at the load balancer", healthy, t.procs)
    del nodes
    t.ports = {
        "lb": lb,
        "primary": primary,
        "replica": replica,
        "primary_backend": backends["primary"],
        "replica_backend": backends["replica-1"],
        "primary_admin": admins["primary"],
        "lb_admin": admins["load-balancer"],
    }
    if filter:
        # One multi-key POST through the balancer, replicated to the replica.
        t.seed(lb)
        t.wait_key(backends["replica-1"], f"k{settings.keys - 1}")
    else:
        # No replication without the filter: seed both stores directly.
        for port in backends.values():
            t.seed(port)
    return t


def start_direct(settings, workdir):
    t = Topology(settings, workdir, "direct-response")
    base = pick_base([0, 9000])
    text = (BENCH / "envoy/direct-response.yaml.in").read_text()
    text = text.replace("@PORT@", str(base)).replace("@ADMIN_PORT@", str(base + 9000))
    config = t.dir / "direct-response.yaml"
    config.write_text(text)
    t.envoy("direct", config)
    wait_until(
        "Envoy direct_response",
        lambda: http_request(base, "GET", f"{ZONE_PATH}?key=k1")[0] == 200,
        t.procs,
    )
    t.ports = {"lb": base}
    return t


def start_backend_alone(settings, workdir, name):
    t = Topology(settings, workdir, name)
    base = pick_base([0])
    t.backend("alone", base)
    wait_http_ok(base, "/api/", t.procs)
    t.seed(base)
    t.ports = {"lb": base, "primary_backend": base}
    return t


def start_nginx_cluster(settings, workdir, name):
    """The article's design on nginx open source over the same kv-backends."""
    t = Topology(settings, workdir, name)
    base = pick_base([0, 1, 2, 8001, 8002])
    lb, primary, replica = base, base + 1, base + 2
    backends = {"primary": base + 8001, "replica": base + 8002}
    for node, port in backends.items():
        t.backend(node, port)
    for port in backends.values():
        wait_http_ok(port, "/api/", t.procs)
    common = (BENCH / "nginx/common.conf.in").read_text()
    values = {
        "RUN": str(t.dir),
        "PRIMARY_PORT": str(primary),
        "REPLICA_PORT": str(replica),
    }
    for role, port, backend in (
        ("replica", replica, backends["replica"]),
        ("primary", primary, backends["primary"]),
        ("load-balancer", lb, None),
    ):
        text = common + (BENCH / f"nginx/{role}.conf.in").read_text()
        fill = {**values, "ROLE": role, "PORT": str(port), "BACKEND_PORT": str(backend)}
        for key, value in fill.items():
            text = text.replace(f"@{key}@", value)
        if re.search(r"@[A-Z_]+@", text):
            raise RuntimeError(f"unfilled placeholder in the nginx {role} config")
        config = t.dir / f"{role}.nginx.conf"
        config.write_text(text)
        (t.dir / f"{role}.tmp").mkdir(exist_ok=True)
        t.proc(
            f"{role}.nginx",
            [
                settings.nginx,
                "-p",
                str(t.dir),
                "-e",
                str(t.dir / f"{role}.nginx.error.log"),
                "-c",
                str(config),
            ],
        )
        wait_http_ok(port, "/api/", t.procs)
    t.ports = {
        "lb": lb,
        "primary": primary,
        "replica": replica,
        "primary_backend": backends["primary"],
        "replica_backend": backends["replica"],
    }
    t.seed(lb)
    t.wait_key(backends["replica"], f"k{settings.keys - 1}")
    return t


# --------------------------------------------------------------------------
# Load


def wrk(settings, port, mode, arg, duration, rate=None, record_perf=None):
    argv = [
        settings.wrk,
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "2s",
        "-s",
        str(BENCH / "wrk/kv.lua"),
        f"http://127.0.0.1:{port}{ZONE_PATH}",
        "--",
        mode,
        str(arg),
    ]
    if rate:
        argv.append(str(rate / settings.threads))
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        preexec_fn=lambda: os.sched_setaffinity(0, settings.client_cpus),
    )
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise RuntimeError(f"wrk gave no result (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


def measured(settings, topo, port, mode, arg, duration, rate=None):
    before = cpu_snapshot(topo.procs)
    started = time.monotonic()
    out = wrk(settings, port, mode, arg, duration, rate)
    wall = time.monotonic() - started
    after = cpu_snapshot(topo.procs)
    cpu = {name: (after[name] - before.get(name, 0)) / CLK_TCK for name in after}
    total = sum(cpu.values())
    seconds = out["duration_us"] / 1e6
    requests = out["requests"]
    errors = sum(out["errors"].values())
    return {
        "rps": requests / seconds if seconds else 0,
        "requests": requests,
        "errors": errors,
        "error_detail": out["errors"],
        "latency_ms": {k: v / 1000 for k, v in out["latency_us"].items()},
        "cpu_s": cpu,
        "cpu_us_per_request": total / requests * 1e6 if requests else None,
        "server_core_use": total / wall,
    }


def perf_record(settings, topo, output, seconds):
    """`perf record -g` on every server process of `topo` for `seconds`."""
    pids = ",".join(str(p) for p in descendants([p.pid for p in topo.procs]))
    return subprocess.Popen(
        ["perf", "record", "-g", "-o", str(output), "-p", pids, "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, settings.client_cpus),
    )


def perf_summary(data):
    """Writes the flat profile (self time by process, library and symbol) next to
    the perf data and prints its top."""
    out = subprocess.run(
        ["perf", "report", "--stdio", "--no-children", "-i", str(data),
         "--sort", "comm,dso,sym", "--percent-limit", "0.7"],
        capture_output=True, text=True, timeout=300,
    )
    text = out.stdout
    data.with_suffix(".txt").write_text(text)
    top = [l for l in text.splitlines() if l.strip() and not l.startswith("#") and "%" in l[:12]]
    print(f"  perf: {data.with_suffix('.txt')}; top entries:")
    for line in top[:25]:
        print("   " + line.rstrip())


def median_of(runs):
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    cpu_names = runs[0]["cpu_s"].keys()
    return {
        "rps": med([r["rps"] for r in runs]),
        "latency_ms": {
            k: med([r["latency_ms"][k] for r in runs]) for k in ("p50", "p90", "p99", "p99_9")
        },
        "cpu_us_per_request": med([r["cpu_us_per_request"] for r in runs]),
        "cpu_us_per_request_with_catchup": med(
            [r.get("cpu_us_per_request_with_catchup") for r in runs]
        ),
        "server_core_use": med([r["server_core_use"] for r in runs]),
        "cpu_us_per_request_by_process": {
            name: med([r["cpu_s"][name] / r["requests"] * 1e6 for r in runs if r["requests"]])
            for name in cpu_names
        },
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }


def warm_up(settings, topo, sid, target, mode):
    arg = settings.keys if mode == "read" else f"{sid}w"
    wrk(settings, topo.ports[target], mode, arg, settings.warmup)


def one_run(settings, topo, sid, target, mode, i, perf_dir):
    arg = settings.keys if mode == "read" else f"{sid}r{i}"
    recorder = None
    if settings.perf == sid and i == settings.runs - 1:
        recorder = perf_record(
            settings, topo, perf_dir / f"perf-{sid}.data", max(1, settings.duration - 1)
        )
    r = measured(settings, topo, topo.ports[target], mode, arg, settings.duration)
    if recorder:
        recorder.wait(30)
        perf_summary(perf_dir / f"perf-{sid}.data")
    print(
        f"  {sid} run {i + 1}: {r['rps']:9.0f} req/s  p99 {r['latency_ms']['p99']:.2f} ms"
        f"  {r['cpu_us_per_request'] or 0:.1f} µs CPU/req  errors {r['errors']}",
        flush=True,
    )
    return r


# --------------------------------------------------------------------------
# Scenarios


SCENARIOS = [
    # id, topology, target, mode, title
    ("C2", "direct", "lb", "read", "Envoy direct_response (the proxy's ceiling)"),
    ("C4-R", "backend", "lb", "read", "kv-backend alone: GET ?key="),
    ("C4-W", "backend-w", "lb", "write", "kv-backend alone: POST"),
    ("C1-R", "plain", "lb", "read", "Envoy LB + nodes without the filter: GET"),
    ("C1-W", "plain-w", "lb", "write", "Envoy LB + nodes without the filter: POST (no replication)"),
    ("R1", "replikv", "lb", "read", "replikv: GET ?key= through the load balancer"),
    ("R2", "replikv", "primary", "read", "replikv: GET ?key= straight to one node (primary)"),
    ("W1", "replikv-w", "lb", "write", "replikv: POST through the LB, replication on"),
    ("L1", "replikv-l", "lb", "lag", "replication lag at half W1's rate"),
    ("W2", "replikv-nogc", "lb", "write", "replikv: POST, backends with --no-group-commit"),
    ("C3-R", "nginx", "lb", "read", "article's design on nginx: GET through the nginx LB"),
    ("C3-W", "nginx-w", "lb", "write", "article's design on nginx: POST (mirror to the replica)"),
]


def start_topology(settings, workdir, kind):
    if kind == "direct":
        return start_direct(settings, workdir)
    if kind.startswith("backend"):
        return start_backend_alone(settings, workdir, kind)
    if kind.startswith("plain"):
        return start_envoy_cluster(settings, workdir, kind, filter=False)
    if kind == "replikv-nogc":
        return start_envoy_cluster(settings, workdir, kind, backend_args=["--no-group-commit"])
    if kind.startswith("replikv"):
        return start_envoy_cluster(settings, workdir, kind)
    if kind.startswith("nginx"):
        return start_nginx_cluster(settings, workdir, kind)
    raise ValueError(kind)


def replication_check(topo):
    """After a write scenario: commits per write on the primary and whether the
    replica caught up (within 10 s)."""
    if "replica_backend" not in topo.ports:
        return {}
    primary = status_of(topo.ports["primary_backend"])
    deadline = time.monotonic() + 10
    replica = status_of(topo.ports["replica_backend"])
    while replica.get("seq") != primary.get("seq") and time.monotonic() < deadline:
        time.sleep(0.2)
        replica = status_of(topo.ports["replica_backend"])
    result = {
        "primary_seq": primary.get("seq"),
        "primary_commits": primary.get("commits"),
        "replica_seq": replica.get("seq"),
        "replica_commits": replica.get("commits"),
        "primary_keys": primary.get("zones", {}).get("default", {}).get("keys"),
        "replica_keys": replica.get("zones", {}).get("default", {}).get("keys"),
    }
    if "primary_admin" in topo.ports:
        _, text = http_request(topo.ports["primary_admin"], "GET", "/stats?filter=replikv")
        for line in text.decode().splitlines():
            name, _, value = line.partition(": ")
            if name.startswith("wasmcustom.replikv.shadow."):
                result[name.removeprefix("wasmcustom.replikv.")] = int(value)
    return result


def settle(topo, timeout=20):
    """Waits (bounded) until a replicating topology's replica has applied every
    write of its primary; returns the seconds it took (None: not replicating)."""
    if not topo.name.startswith("replikv"):
        return None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        primary = status_of(topo.ports["primary_backend"]).get("seq")
        replica = status_of(topo.ports["replica_backend"]).get("seq")
        if primary is not None and primary == replica:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def run_lag(settings, topo, w1_rps, rate=None):
    rate = rate or int(os.environ.get("BENCH_L1_RATE") or max(50, int((w1_rps or 2000) / 2)))
    port = topo.ports["lb"]
    wrk_duration = settings.lag_duration + 2
    before = cpu_snapshot(topo.procs)
    load = subprocess.Popen(
        [
            settings.wrk,
            f"-t{settings.threads}",
            f"-c{settings.connections}",
            f"-d{wrk_duration:g}s",
            "--timeout",
            "2s",
            "-s",
            str(BENCH / "wrk/kv.lua"),
            f"http://127.0.0.1:{port}{ZONE_PATH}",
            "--",
            "write",
            "L1",
            str(rate / settings.threads),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, settings.client_cpus),
    )
    try:
        time.sleep(1)
        probe = subprocess.run(
            [
                sys.executable,
                str(BENCH / "lagprobe.py"),
                "--write-url",
                f"http://127.0.0.1:{port}{ZONE_PATH}",
                "--read-url",
                f"http://127.0.0.1:{topo.ports['replica']}{ZONE_PATH}",
                "--duration",
                str(settings.lag_duration),
                "--interval",
                str(settings.lag_interval),
                "--prefix",
                "lagprobe",
            ],
            capture_output=True,
            text=True,
            timeout=settings.lag_duration + 45,
            preexec_fn=lambda: os.sched_setaffinity(0, settings.client_cpus),
        )
        stdout, stderr = load.communicate(timeout=wrk_duration + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    after = cpu_snapshot(topo.procs)
    if probe.returncode != 0:
        raise RuntimeError(f"lag probe failed:\n{probe.stderr}")
    lag = json.loads(probe.stdout)
    wrk_out = next(
        (json.loads(l[len("WRKJSON ") :]) for l in stdout.splitlines() if l.startswith("WRKJSON ")),
        None,
    )
    if wrk_out is None:
        raise RuntimeError(f"wrk gave no result (exit {load.returncode}):\n{stdout}\n{stderr}")
    seconds = wrk_out["duration_us"] / 1e6
    cpu = sum(after[n] - before.get(n, 0) for n in after) / CLK_TCK
    # The probe's own writes count too; its reads of the replica are few
    # (one per key, plus at most one poll a millisecond while one is awaited).
    writes = max(1, wrk_out["requests"] + lag.get("samples", 0))
    return {
        "target_rps": rate,
        "achieved_rps": wrk_out["requests"] / seconds,
        "load_latency_ms": {k: v / 1000 for k, v in wrk_out["latency_us"].items()},
        "load_errors": sum(wrk_out["errors"].values()),
        "server_core_use": cpu / seconds,
        # Server CPU per write, by process: how the cost of one write changes
        # with the rate (L1 at half W1 against the low rate, and W1 itself).
        "cpu_us_per_write": cpu / writes * 1e6,
        "cpu_us_per_write_by_process": {
            n: (after[n] - before.get(n, 0)) / CLK_TCK / writes * 1e6 for n in after
        },
        "probe": lag,
    }


# --------------------------------------------------------------------------
# Report


def machine_info(settings):
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    mem = ""
    try:
        mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        mem = f"{int(mem) // 1024 // 1024} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "envoy": version([settings.envoy, "--version"]).split(" version: ")[-1],
        "nginx": version([settings.nginx, "-v"]),
        "wrk": version([settings.wrk, "-v"]),
        "commit": version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratios(results):
    def rps(sid):
        r = results.get(sid)
        return r["median"]["rps"] if r and "median" in r else None

    def ratio(a, b):
        x, y = rps(a), rps(b)
        return x / y if x and y else None

    def cpu(sid, key="cpu_us_per_request"):
        r = results.get(sid)
        return r["median"].get(key) if r and "median" in r else None

    def cpu_ratio(a, b, key="cpu_us_per_request"):
        # Requests per CPU second of `a` over those of `b`: what throughput
        # would be if both had the server core to themselves.
        x, y = cpu(a, key), cpu(b, key)
        return y / x if x and y else None

    lag = results.get("L1", {}).get("lag")
    low = results.get("L1", {}).get("lag_low")
    return {
        "R1/C1": ratio("R1", "C1-R"),
        "R1/C1 (CPU)": cpu_ratio("R1", "C1-R"),
        "W1/C1": ratio("W1", "C1-W"),
        "W1/C1 (CPU)": cpu_ratio("W1", "C1-W"),
        "W1/C1 (CPU with catch-up)": cpu_ratio("W1", "C1-W", "cpu_us_per_request_with_catchup"),
        "W1/W2": ratio("W1", "W2"),
        "R1/C3": ratio("R1", "C3-R"),
        "W1/C3": ratio("W1", "C3-W"),
        "R1/C2": ratio("R1", "C2"),
        "R1/C4": ratio("R1", "C4-R"),
        "W1/C4": ratio("W1", "C4-W"),
        "R2/R1": ratio("R2", "R1"),
        "lag_p50_ms": lag["probe"]["lag_ms"]["p50"] if lag else None,
        "lag_p99_ms": lag["probe"]["lag_ms"]["p99"] if lag else None,
        "lag_p99_ms at the low rate": low["probe"]["lag_ms"]["p99"] if low else None,
    }


TARGETS = [
    ("R1/C1", ">=", 0.90),
    ("R1/C1 (CPU)", ">=", 0.90),
    ("W1/C1", ">=", 0.60),
    ("W1/C1 (CPU)", ">=", 0.60),
    ("W1/C1 (CPU with catch-up)", ">=", 0.60),
    ("lag_p99_ms", "<", 20.0),
]


def target_lines(r):
    lines = []
    for key, op, bound in TARGETS:
        value = r.get(key)
        if value is None:
            lines.append(f"- {key} {op} {bound}: not measured")
            continue
        ok = value >= bound if op == ">=" else value < bound
        lines.append(f"- {key} = {value:.2f} (target {op} {bound}): {'met' if ok else 'NOT met'}")
    return lines


def print_lag(lag):
    """One progress line for a lag run."""
    p = lag["probe"]["lag_ms"]
    print(
        f"  L1 at {lag['achieved_rps']:.0f} req/s: lag p50 {fmt(p['p50'])} ms"
        f" p99 {fmt(p['p99'])} ms ({lag['probe']['samples']} probes)",
        flush=True,
    )


def by_process(lag):
    """`name µs, ...` of a lag run's server CPU per write."""
    per = lag.get("cpu_us_per_write_by_process", {})
    return ", ".join(f"{n} {v:.0f}" for n, v in sorted(per.items(), key=lambda kv: -kv[1]))


def markdown(doc):
    s, m, results = doc["settings"], doc["machine"], doc["results"]
    lines = [
        f"# replikv benchmark, {doc['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, kernel {m['kernel']}.",
        f"Load average before / after: {doc['load_before']} / {doc['load_after']}"
        " (a shared machine: compare ratios within this run, not absolute figures across runs).",
        f"Envoy {m['envoy']}; {m['nginx']}; {m['wrk']}; commit {m['commit']}"
        f" (filter .wasm sha256 {m.get('wasm_sha256', '?')}…).",
        "",
        f"Command: `make bench` (wrk {s['threads']} thread, {s['connections']} connections,"
        f" {s['warmup']:g} s warm-up then {s['runs']} runs of {s['duration']:g} s per scenario;"
        f" medians of the runs). Servers pinned to CPU {s['server_cpus']}, wrk and the lag probe"
        f" to CPU {s['client_cpus']}; Envoy --concurrency {s['concurrency']}, nginx 1 worker;"
        f" kv-backend zone `{s['zone']}`, a fresh data dir per topology; reads over"
        f" {s['keys']} seeded keys, writes one new key per POST.",
        "",
        "| scenario | what | req/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | server core use | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sid, _, _, mode, title in SCENARIOS:
        r = results.get(sid)
        if not r or mode == "lag":
            continue
        if "error" in r:
            lines.append(f"| {sid} | {title} | failed: {r['error'][:80]} | | | | | | |")
            continue
        md = r["median"]
        lat = md["latency_ms"]
        lines.append(
            f"| {sid} | {title} | {fmt(md['rps'], 0)} | {fmt(lat['p50'])} | {fmt(lat['p99'])}"
            f" | {fmt(lat['p99_9'])} | {fmt(md['cpu_us_per_request'], 1)}"
            f" | {fmt(md['server_core_use'])} | {md['errors']} |"
        )
    lag = results.get("L1", {})
    lines.append("")
    if "lag" in lag:
        l = lag["lag"]
        p = l["probe"]
        lines += [
            f"L1, replication lag (2xx from the primary → key readable on the replica's Envoy),"
            f" under POST load paced at {l['target_rps']:,} req/s"
            f" ({'half of W1' if 'W1' in results and 'median' in results['W1'] else 'fixed rate'}; achieved"
            f" {l['achieved_rps']:,.0f} req/s, load p99 {l['load_latency_ms']['p99']:.2f} ms):"
            f" p50 {fmt(p['lag_ms']['p50'])} ms, p90 {fmt(p['lag_ms']['p90'])} ms,"
            f" p99 {fmt(p['lag_ms']['p99'])} ms, max {fmt(p['lag_ms']['max'])} ms over"
            f" {p['samples']} probes ({p['missing']} not visible 10 s after the load,"
            f" {p['write_errors']} failed writes); server core use {fmt(l['server_core_use'])},"
            f" server CPU {fmt(l['cpu_us_per_write'], 0)} µs per write ({by_process(l)}).",
            "",
        ]
        if "lag_low" in lag:
            l = lag["lag_low"]
            p = l["probe"]
            lines += [
                f"L1 at a low fixed rate ({l['target_rps']:,} req/s, BENCH_L1_LOW_RATE; achieved"
                f" {l['achieved_rps']:,.0f} req/s, server core use {fmt(l['server_core_use'])},"
                f" server CPU {fmt(l['cpu_us_per_write'], 0)} µs per write ({by_process(l)})):"
                f" lag p50 {fmt(p['lag_ms']['p50'])} ms, p90 {fmt(p['lag_ms']['p90'])} ms,"
                f" p99 {fmt(p['lag_ms']['p99'])} ms, max {fmt(p['lag_ms']['max'])} ms over"
                f" {p['samples']} probes ({p['missing']} not visible). Not a target: it shows"
                " the lag when the servers are not queueing for their one core.",
                "",
            ]
    elif "error" in lag:
        lines += [f"L1 failed: {lag['error']}", ""]
    r = doc["ratios"]
    lines += [
        "## Ratios (this run)",
        "",
        "A/B is A's median throughput over B's. \"(CPU)\" is B's server CPU per request over"
        " A's: the same ratio had both had the server core to themselves; it is the steadier"
        " one when other work on the machine takes part of that core (see \"server core use\")."
        " \"(CPU with catch-up)\" also counts the server CPU spent after each write run until"
        " the replica had applied everything (the replication that run left behind).",
        "",
    ]
    for key, value in r.items():
        if value is not None and not key.startswith("lag"):
            lines.append(f"- {key}: {value:.2f}")
    lines += ["", "## Targets", ""] + target_lines(r)
    lines += ["", "## Replication after the write scenarios", ""]
    for sid in ("W1", "W2", "L1", "C3-W"):
        check = results.get(sid, {}).get("replication")
        if check:
            caught = [
                r.get("replica_caught_up_s")
                for r in results[sid].get("runs", [])
                if r.get("replica_caught_up_s") is not None
            ]
            extra = (
                f"; after each run the replica caught up in "
                + ", ".join(f"{c:.1f}" for c in caught)
                + " s (20 s at most)"
                if caught
                else ""
            )
            lines.append(f"- {sid}: " + ", ".join(f"{k} {v}" for k, v in check.items()) + extra)
    lines += ["", "## Server CPU per request, by process (µs, medians)", ""]
    for sid, _, _, mode, _ in SCENARIOS:
        r = results.get(sid)
        if r and "median" in r:
            by = r["median"]["cpu_us_per_request_by_process"]
            lines.append(f"- {sid}: " + ", ".join(f"{k} {v:.1f}" for k, v in by.items()))
    lines += ["", "![throughput and p99 per scenario](" + doc["svg"] + ")", ""]
    return "\n".join(lines) + "\n"


def svg_chart(doc):
    rows = [
        (sid, doc["results"][sid]["median"])
        for sid, _, _, mode, _ in SCENARIOS
        if mode != "lag" and "median" in doc["results"].get(sid, {})
    ]
    row_h, top, label_w, bar_w, gap = 24, 56, 60, 300, 90
    height = top + row_h * len(rows) + 40
    width = label_w + 2 * bar_w + gap + 120
    max_rps = max((m["rps"] for _, m in rows), default=1) or 1
    max_p99 = max((m["latency_ms"]["p99"] or 0 for _, m in rows), default=1) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">replikv benchmark {doc["date"]}'
        f" (medians; one run, one machine)</text>",
        f'<text x="{label_w}" y="{top - 10}" font-weight="bold">throughput (req/s)</text>',
        f'<text x="{label_w + bar_w + gap}" y="{top - 10}" font-weight="bold">p99 latency (ms)</text>',
    ]
    for i, (sid, m) in enumerate(rows):
        y = top + i * row_h
        ours = sid[0] in "RWL"
        color = "#2b6cb0" if ours else "#a0aec0"
        w1 = bar_w * m["rps"] / max_rps
        p99 = m["latency_ms"]["p99"] or 0
        w2 = bar_w * p99 / max_p99
        out += [
            f'<text x="10" y="{y + 15}">{sid}</text>',
            f'<rect x="{label_w}" y="{y + 3}" width="{w1:.1f}" height="{row_h - 8}" fill="{color}"/>',
            f'<text x="{label_w + w1 + 4:.1f}" y="{y + 15}">{m["rps"]:,.0f}</text>',
            f'<rect x="{label_w + bar_w + gap}" y="{y + 3}" width="{w2:.1f}" height="{row_h - 8}"'
            f' fill="{"#c05621" if ours else "#cbd5e0"}"/>',
            f'<text x="{label_w + bar_w + gap + w2 + 4:.1f}" y="{y + 15}">{p99:.2f}</text>',
        ]
    y = top + row_h * len(rows) + 20
    out.append(
        f'<text x="10" y="{y}" fill="#4a5568">dark: replikv (R, W); light: comparisons'
        " (C1 no filter, C2 direct_response, C3 nginx, C4 backend alone)</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------


def snapshot_binaries(settings, workdir):
    """Copies the builds this run uses: other work may rebuild target/ while the
    benchmark runs, and one run must measure one build."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for attr in ("backend", "up", "wasm"):
        source = Path(getattr(settings, attr))
        copy = bin_dir / source.name
        shutil.copy2(source, copy)
        setattr(settings, attr, copy)
    digest = hashlib.sha256(Path(settings.wasm).read_bytes()).hexdigest()
    return {"wasm_sha256": digest[:16]}


def check_tools(settings):
    missing = []
    for what, path in (
        ("wrk (apt-get install wrk)", settings.wrk),
        ("nginx (apt-get install nginx)", settings.nginx),
        ("Envoy (make envoy)", settings.envoy),
        ("kv-backend (make build)", settings.backend),
        ("replikv-up (make build)", settings.up),
        ("filter .wasm (make build)", settings.wasm),
    ):
        if not path or not Path(path).exists():
            missing.append(what)
    if missing:
        sys.exit("bench: missing " + ", ".join(missing))


def main():
    settings = Settings()
    check_tools(settings)
    os.sched_setaffinity(0, settings.client_cpus)

    def on_signal(signum, _frame):
        raise SystemExit(f"bench: signal {signum}, stopping")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    settings.out.mkdir(parents=True, exist_ok=True)
    workdir = settings.out / f"run-{stamp}"
    wanted = settings.scenarios or [sid for sid, *_ in SCENARIOS]
    unknown = set(wanted) - {sid for sid, *_ in SCENARIOS}
    if unknown:
        sys.exit(f"bench: unknown scenario(s) {', '.join(sorted(unknown))}")
    load_before = open("/proc/loadavg").read().split()[:3]
    build = snapshot_binaries(settings, workdir)
    print(
        f"bench: servers on CPU {sorted(settings.server_cpus)}, wrk on CPU"
        f" {sorted(settings.client_cpus)}; {settings.runs} x {settings.duration:g} s per scenario;"
        f" load average {' '.join(load_before)}",
        flush=True,
    )
    results = {}
    started = time.monotonic()
    topologies = {}  # kind -> Topology

    def topology(kind):
        if kind not in topologies:
            topologies[kind] = start_topology(settings, workdir, kind)
        return topologies[kind]

    def drop(kind):
        topo = topologies.pop(kind, None)
        if topo:
            topo.stop()

    def failed(sid, kind, error):
        print(f"  {sid} failed: {error}", file=sys.stderr, flush=True)
        results[sid] = {"error": str(error)}
        drop(kind)

    expected = (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError)
    try:
        # Reads change nothing: every read topology stays up and the read
        # scenarios take turns, run by run (in a rotating order), so that the
        # machine's drifting background load falls on all of them alike.
        reads = [sc for sc in SCENARIOS if sc[3] == "read" and sc[0] in wanted]
        if reads:
            print("reads, interleaved: " + ", ".join(sc[0] for sc in reads), flush=True)
        live = []
        for sid, kind, target, mode, title in reads:
            try:
                print(f"{sid}: {title}: starting, warming up", flush=True)
                warm_up(settings, topology(kind), sid, target, mode)
                live.append((sid, kind, target, mode))
                results[sid] = {"runs": []}
            except expected as error:
                failed(sid, kind, error)
        for i in range(settings.runs):
            order = live[i % len(live) :] + live[: i % len(live)] if live else []
            for sid, kind, target, mode in order:
                if "error" in results[sid]:
                    continue
                try:
                    results[sid]["runs"].append(
                        one_run(settings, topology(kind), sid, target, mode, i, workdir)
                    )
                except expected as error:
                    failed(sid, kind, error)
        for sid, *_ in live:
            if "error" not in results[sid]:
                results[sid]["median"] = median_of(results[sid]["runs"])
        for kind in list(topologies):
            drop(kind)

        # Writes: every write topology starts fresh and they take turns run by
        # run too. After each run of a replicating scenario the replica is
        # given time (bounded) to catch up, so that no replication backlog
        # runs on during another scenario's run.
        writes = [sc for sc in SCENARIOS if sc[3] == "write" and sc[0] in wanted]
        if writes:
            print("writes, interleaved: " + ", ".join(sc[0] for sc in writes), flush=True)
        live = []
        for sid, kind, target, mode, title in writes:
            try:
                print(f"{sid}: {title}: starting, warming up", flush=True)
                topo = topology(kind)
                warm_up(settings, topo, sid, target, mode)
                settle(topo)
                live.append((sid, kind, target, mode))
                results[sid] = {"runs": []}
            except expected as error:
                failed(sid, kind, error)
        for i in range(settings.runs):
            order = live[i % len(live) :] + live[: i % len(live)] if live else []
            for sid, kind, target, mode in order:
                if "error" in results[sid]:
                    continue
                try:
                    topo = topology(kind)
                    before = cpu_snapshot(topo.procs)
                    r = one_run(settings, topo, sid, target, mode, i, workdir)
                    r["replica_caught_up_s"] = settle(topo)
                    # The replication a run left behind is part of its cost.
                    spent = sum(cpu_snapshot(topo.procs).values()) - sum(before.values())
                    r["cpu_us_per_request_with_catchup"] = (
                        spent / CLK_TCK / r["requests"] * 1e6 if r["requests"] else None
                    )
                    results[sid]["runs"].append(r)
                except expected as error:
                    failed(sid, kind, error)
        for sid, kind, *_ in live:
            if "error" not in results[sid]:
                results[sid]["median"] = median_of(results[sid]["runs"])
                try:
                    results[sid]["replication"] = replication_check(topology(kind))
                except expected as error:
                    results[sid]["replication"] = {"error": str(error)}
        for kind in list(topologies):
            drop(kind)

        # L1 on a fresh topology of its own.
        for sid, kind, target, mode, title in SCENARIOS:
            if sid not in wanted or mode != "lag":
                continue
            print(f"{sid}: {title}", flush=True)
            try:
                topo = topology(kind)
                w1 = results.get("W1", {}).get("median", {}).get("rps")
                lag = run_lag(settings, topo, w1)
                results[sid] = {"lag": lag, "replication": replication_check(topo)}
                print_lag(lag)
                drop(kind)
                # The same at a low fixed rate, where the server core is far
                # from full: the lag of the design itself rather than of a
                # queue for the one core every server shares here.
                low = run_lag(settings, topology(kind), w1, settings.l1_low_rate)
                results[sid]["lag_low"] = low
                print_lag(low)
                drop(kind)
            except expected as error:
                failed(sid, kind, error)
    finally:
        for kind in list(topologies):
            drop(kind)
        stop_all()

    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "stamp": stamp,
        "elapsed_s": round(time.monotonic() - started, 1),
        "load_before": " ".join(load_before),
        "load_after": " ".join(open("/proc/loadavg").read().split()[:3]),
        "machine": {**machine_info(settings), **build},
        "settings": {
            "duration": settings.duration,
            "warmup": settings.warmup,
            "runs": settings.runs,
            "connections": settings.connections,
            "threads": settings.threads,
            "concurrency": settings.concurrency,
            "zone": settings.zone,
            "keys": settings.keys,
            "server_cpus": ",".join(map(str, sorted(settings.server_cpus))),
            "client_cpus": ",".join(map(str, sorted(settings.client_cpus))),
        },
        "svg": f"bench-{stamp}.svg",
        "results": results,
    }
    doc["ratios"] = ratios(results)
    (settings.out / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (settings.out / f"bench-{stamp}.svg").write_text(svg_chart(doc))
    report = markdown(doc)
    (settings.out / f"bench-{stamp}.md").write_text(report)
    for name in ("json", "svg", "md"):
        latest = settings.out / f"latest.{name}"
        latest.unlink(missing_ok=True)
        latest.symlink_to(f"bench-{stamp}.{name}")
    print()
    print(report.split("## Replication")[0].rstrip())
    print()
    print(f"bench: report {settings.out / f'bench-{stamp}.md'} (also latest.md, .json, .svg)")
    failed = [sid for sid, r in results.items() if "error" in r]
    if failed:
        print(f"bench: failed scenarios: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
