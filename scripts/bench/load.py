#!/usr/bin/env python3
"""A bounded load test of the workbench's server, on loopback only; it stops by itself.

Starts `backend serve` on a free loopback port (or uses --url, which must be loopback),
runs --clients keep-alive clients for --seconds over a mix of read endpoints, and prints
requests/s, latency percentiles, answers by status and errors (connection failures and 5xx).

    python3 scripts/bench/load.py --backend target/release/backend --seconds 10 --clients 50
    python3 scripts/bench/load.py --backend target/release/backend --public   # rate limits on
"""
import argparse
import http.client
import ipaddress
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter

PATHS = ["/api/health", "/api/models", "/api/runs?limit=5", "/api/samples?n=4", "/api/runs/1", "/api/nothing"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(args) -> tuple[subprocess.Popen, str]:
    # Every client here is 127.0.0.1: allow them all, or the per-client cap closes the rest.
    command = [args.backend, "--device", "cpu", "--data-dir", args.data_dir, "serve", "--addr", "127.0.0.1:0"]
    command += ["--max-client-connections", str(max(64, args.clients + 8))]
    command += ["--public", "--rate-limit", str(args.rate_limit)] if args.public else []
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    banner = server.stdout.readline()
    if "http://" not in banner:
        server.kill()
        sys.exit(f"the server did not start: {banner!r}")
    url = "http://" + banner.split("http://")[1].split()[0]
    deadline = time.time() + 60
    while time.time() < deadline:  # the worker takes a moment to set up its device
        try:
            connection = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=5)
            connection.request("GET", "/api/health")
            if b'"device":"' in connection.getresponse().read():
                return server, url
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("the server's worker did not start within 60 s")


def client(netloc: str, stop_at: float, index: int, latencies: list, statuses: Counter, errors: Counter, lock: threading.Lock):
    connection = None
    n = index
    mine_latency, mine_status, mine_errors = [], Counter(), Counter()
    while time.time() < stop_at:
        path = PATHS[n % len(PATHS)]
        n += 1
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection(netloc, timeout=10)
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            mine_latency.append(time.perf_counter() - started)
            mine_status[response.status] += 1
            if response.status >= 500:
                mine_errors[f"{response.status} on {path}"] += 1
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as error:
            mine_errors[type(error).__name__] += 1
            if connection is not None:
                connection.close()
            connection = None
    with lock:
        latencies.extend(mine_latency)
        statuses.update(mine_status)
        errors.update(mine_errors)


def percentile(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", help="start this backend binary for the test (else use --url)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--url", help="a server already running on loopback")
    parser.add_argument("--public", action="store_true", help="start the server in public mode")
    parser.add_argument("--rate-limit", type=int, default=120, help="per client per minute, with --public")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    if not (0 < args.seconds <= 300 and 0 < args.clients <= 1000):
        sys.exit("--seconds must be in (0, 300] and --clients in (0, 1000]")
    server = None
    if args.backend:
        server, url = start_server(args)
    elif args.url:
        url = args.url
    else:
        sys.exit("give --backend (to start a server) or --url (a running one)")
    netloc = urllib.parse.urlsplit(url).netloc
    if not is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        sys.exit(f"{url} is not a loopback address; this load test runs on loopback only")
    latencies, statuses, errors, lock = [], Counter(), Counter(), threading.Lock()
    try:
        started = time.time()
        stop_at = started + args.seconds
        threads = [threading.Thread(target=client, args=(netloc, stop_at, i, latencies, statuses, errors, lock)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.time() - started
        alive = server is None or server.poll() is None
    finally:
        if server is not None:
            server.kill()
            server.wait()
    latencies.sort()
    ms = lambda s: f"{1000 * s:.1f} ms"
    print(f"{url}: {args.clients} clients for {elapsed:.1f} s over {', '.join(PATHS)}")
    print(f"requests: {len(latencies)} ({len(latencies) / elapsed:.0f}/s)")
    print(f"latency: p50 {ms(percentile(latencies, 50))}, p99 {ms(percentile(latencies, 99))}, max {ms(latencies[-1] if latencies else float('nan'))}")
    print("answers: " + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())))
    print(f"errors: {sum(errors.values())}" + ("" if not errors else " (" + ", ".join(f"{k}: {v}" for k, v in errors.most_common()) + ")"))
    print(f"server still up: {'yes' if alive else 'no'}")
    sys.exit(0 if alive and not errors else 1)


if __name__ == "__main__":
    main()
