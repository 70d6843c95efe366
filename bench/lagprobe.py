#!/usr/bin/env python3
"""Replication-lag probe (scenario L1), Python standard library only.

A writer thread POSTs one new key through WRITE_URL (the load balancer, so the
write reaches the primary) every INTERVAL seconds and notes the instant its 2xx
arrived. A reader thread polls READ_URL (a replica node) for the oldest key not
yet seen there, and for the next ones as soon as one shows up: replication
applies writes in sequence order, so a key is never visible before an older
one. The lag of a key is the time from its 2xx to the first 200 read of it
(resolution: one read round trip plus at most 1 ms between polls). Writing
stops after DURATION seconds; keys still not visible DRAIN seconds later count
as `missing`. Prints one JSON object.

    lagprobe.py --write-url http://127.0.0.1:P/api/9/http/keyvals/default \\
                --read-url  http://127.0.0.1:R/api/9/http/keyvals/default \\
                --duration 8 --interval 0.02 --prefix lag1
"""

import argparse
import collections
import http.client
import json
import sys
import threading
import time
import urllib.parse


class Conn:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return response.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        return None


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-url", required=True)
    parser.add_argument("--read-url", required=True)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--prefix", default="lag")
    args = parser.parse_args()

    writer, reader = Conn(args.write_url), Conn(args.read_url)
    pending = collections.deque()  # (key, instant of its 2xx), oldest first
    lock = threading.Condition()
    lags, state = [], {"write_errors": 0, "writing": True, "polls": 0}
    start = time.monotonic()

    def write_loop():
        next_at, i = start, 0
        while time.monotonic() < start + args.duration:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += args.interval
            i += 1
            key = f"{args.prefix}-{i}"
            try:
                status = writer.request(
                    "POST",
                    writer.path,
                    body=json.dumps({key: "lag-probe"}),
                    headers={"Content-Type": "application/json"},
                )
            except (OSError, http.client.HTTPException):
                status = None
            acked = time.monotonic()
            if status is None or not 200 <= status < 300:
                state["write_errors"] += 1
                continue
            with lock:
                pending.append((key, acked))
                lock.notify()
        with lock:
            state["writing"] = False
            lock.notify()

    thread = threading.Thread(target=write_loop, daemon=True)
    thread.start()
    give_up = start + args.duration + args.drain
    while time.monotonic() < give_up:
        with lock:
            while not pending and state["writing"]:
                lock.wait(0.1)
            if not pending:
                break
            key, acked = pending[0]
        state["polls"] += 1
        try:
            status = reader.request("GET", f"{reader.path}?key={urllib.parse.quote(key)}")
        except (OSError, http.client.HTTPException):
            status = None
        seen = time.monotonic()
        if status == 200:
            lags.append((seen - acked) * 1000)
            with lock:
                pending.popleft()
        else:
            time.sleep(0.001)
    thread.join(5)
    elapsed = time.monotonic() - start
    lags.sort()
    result = {
        "samples": len(lags),
        "missing": len(pending),
        "write_errors": state["write_errors"],
        "polls": state["polls"],
        "elapsed_s": round(elapsed, 3),
        "lag_ms": {
            "p50": percentile(lags, 50),
            "p90": percentile(lags, 90),
            "p99": percentile(lags, 99),
            "max": lags[-1] if lags else None,
            "mean": sum(lags) / len(lags) if lags else None,
        },
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
