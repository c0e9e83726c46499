"""The engine's CPU throughput beside PyTorch's, measured in one run, interleaved.

Runs `backend bench` and PyTorch's mirror of it (`torch_cpu_bench.py`, in ../shared/reference
beside the repository) in turns, `--rounds` times each, with the same batch sizes and thread
count, and prints the median of each path as a Markdown table. Interleaving matters: anything
else running on the machine slows both sides alike instead of one.

    python3 scripts/bench/cpu_vs_torch.py [--python /path/to/python-with-torch] [--rounds 3]

Needs a release build (`cargo build --release -p unlearn-backend`) and PyTorch with torchvision.
"""
import argparse, json, os, re, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATHS = ["train", "forward", "importance"]

ap = argparse.ArgumentParser()
ap.add_argument("--python", default=sys.executable, help="a Python that has torch and torchvision")
ap.add_argument("--torch-bench", default=os.path.join(ROOT, "..", "shared", "reference", "torch_cpu_bench.py"))
ap.add_argument("--backend", action="append", help="a `backend` binary; repeat to compare builds [default: target/release/backend]")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--train-batch", type=int, default=32)
ap.add_argument("--forward-batch", type=int, default=250)
ap.add_argument("--importance-batch", type=int, default=64)
ap.add_argument("--threads", type=int, default=os.cpu_count())
a = ap.parse_args()
a.backend = a.backend or [os.path.join(ROOT, "target", "release", "backend")]

sizes = ["--steps", str(a.steps), "--train-batch", str(a.train_batch), "--forward-batch", str(a.forward_batch), "--importance-batch", str(a.importance_batch)]
env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), RUST_LOG="warn")


def engine(binary):
    out = subprocess.run([binary, "--device", "cpu", "bench", *sizes], capture_output=True, text=True, env=env, check=True).stdout
    rates = [float(x) for x in re.findall(r"batch\s+\d+:\s+([\d.]+) img/s", out)]
    return dict(zip(PATHS, rates))


def torch():
    out = subprocess.run([a.python, a.torch_bench, *sizes, "--threads", str(a.threads)], capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return {p: row[f"{p}_img_s"] for p in PATHS}, row["torch"]


results = {binary: [] for binary in a.backend}
torch_results = []
version = "?"
for r in range(a.rounds):
    for binary in a.backend:
        results[binary].append(engine(binary))
        print(f"round {r + 1}: {binary} {results[binary][-1]}", file=sys.stderr)
    t, version = torch()
    torch_results.append(t)
    print(f"round {r + 1}: torch {t}", file=sys.stderr)

print(f"{a.threads} threads, medians of {a.rounds} interleaved rounds of {a.steps} timed steps; batches train {a.train_batch}, forward {a.forward_batch}, importance {a.importance_batch}\n")
engines = " | ".join(f"`{os.path.relpath(b)}` | ratio" for b in a.backend)
print(f"| path | PyTorch {version} | {engines} |")
print("|---" * (2 + 2 * len(a.backend)) + "|")
for p in PATHS:
    t = statistics.median(x[p] for x in torch_results)
    cells = []
    for binary in a.backend:
        e = statistics.median(x[p] for x in results[binary])
        cells.append(f"{e:.1f} img/s | {e / t:.2f}x")
    print(f"| {p} | {t:.1f} img/s | {' | '.join(cells)} |")
