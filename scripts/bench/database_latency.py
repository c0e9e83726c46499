#!/usr/bin/env python3
"""What a run costs through PostgreSQL, against the embedded server: on loopback only.

Starts a throwaway PostgreSQL server (initdb into a temporary folder; as root, its programs
run as the `postgres` user), then, one after the other on the same data folder:
  - embedded: `backend serve` on SQLite, with its worker thread;
  - shared: `backend serve --database postgres://...` and one `backend worker`.
Each gets --runs sequential evaluations of the model (distinct test subsets, so none is
answered from the history); prints the median and worst time of the POST, and from the POST
to the run's end as read from the API, in both modes, and the difference.

    python3 scripts/bench/database_latency.py --backend target/release/backend --data-dir data
"""
import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--"] + command if os.geteuid() == 0 else command


def start_postgres(folder: str) -> tuple[str, callable]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    bin_dir = bins[-1] if bins else os.path.dirname(shutil.which("initdb") or sys.exit("PostgreSQL's initdb is not installed"))
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", folder], check=True)
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run(as_postgres([f"{bin_dir}/initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-o", options, "-l", f"{folder}/log", "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    stop = lambda: subprocess.run(as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), stdout=subprocess.DEVNULL)
    return f"postgres://postgres@127.0.0.1:{port}/postgres", stop


def spawn(args, extra: list[str]) -> subprocess.Popen:
    command = [args.backend, "--device", "cpu", "--data-dir", args.data_dir] + extra
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def measure(url: str, args, offset: int) -> tuple[list[float], list[float]]:
    deadline = time.time() + 60
    while call("GET", f"{url}/api/health")[1].get("device") is None:
        if time.time() > deadline:
            sys.exit("no worker within 60 s")
        time.sleep(0.1)
    posts, ends = [], []
    for n in range(args.runs):
        started = time.perf_counter()
        status, accepted = call("POST", f"{url}/api/runs", {"kind": "eval", "model": args.model, "test_limit": args.test_limit + offset + n})
        posted = time.perf_counter()
        if status != 202:
            sys.exit(f"submission answered {status}: {accepted}")
        while True:
            run = call("GET", f"{url}/api/runs/{accepted['id']}")[1]
            if run["status"] not in ("queued", "running"):
                break
            time.sleep(0.01)
        if run["status"] != "succeeded":
            sys.exit(f"run {accepted['id']} {run['status']}: {run.get('error')}")
        posts.append(posted - started)
        ends.append(time.perf_counter() - started)
    return posts, ends


def summary(name: str, values: list[float]) -> str:
    return f"{name}: median {statistics.median(values) * 1000:.1f} ms, worst {max(values) * 1000:.1f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="target/release/backend")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model", default="reference")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--test-limit", type=int, default=100, help="test images per evaluation (each run adds one, so that none repeats)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="workbench-bench-pg")
    database, stop_postgres = start_postgres(folder)
    results = {}
    try:
        history = tempfile.mkdtemp(prefix="workbench-bench-sqlite")
        server = spawn(args, ["serve", "--addr", "127.0.0.1:0", "--database", os.path.join(history, "runs.sqlite")])
        url = "http://" + server.stdout.readline().split("http://")[1].split()[0]
        try:
            results["embedded (SQLite)"] = measure(url, args, 0)
        finally:
            server.kill()
        worker = spawn(args, ["worker", "--database", database, "--name", "bench"])
        server = spawn(args, ["serve", "--addr", "127.0.0.1:0", "--database", database])
        url = "http://" + server.stdout.readline().split("http://")[1].split()[0]
        try:
            results["shared (PostgreSQL)"] = measure(url, args, 0)
        finally:
            server.kill()
            worker.kill()
    finally:
        stop_postgres()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.runs} sequential evaluations of '{args.model}' on {args.test_limit}+ test images, one at a time:")
    for mode, (posts, ends) in results.items():
        print(f"  {mode}: {summary('POST', posts)}; {summary('POST to end', ends)}")
    (embedded_posts, embedded_ends), (shared_posts, shared_ends) = results.values()
    print(
        f"  through the database: POST {1000 * (statistics.median(shared_posts) - statistics.median(embedded_posts)):+.1f} ms, "
        f"POST to end {1000 * (statistics.median(shared_ends) - statistics.median(embedded_ends)):+.1f} ms (medians)"
    )


if __name__ == "__main__":
    main()
