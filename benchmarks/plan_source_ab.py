"""A/B timing of the compiled plan from two source trees of recu (before and after a change), interleaved.

Each tree runs in its own worker process (its ``src`` first on ``sys.path``, so the installed recu is not
used) that loads the same deployment file; the controller asks the workers for timing rounds in
alternation (A B B A A B ...), so a slow spell of the machine falls on both. Prints per model and thread
count the median latency of each tree (batch 1, or ``--batch``) and the ratio B / A.

    git worktree add /tmp/before HEAD~1        # the tree to compare against
    python benchmarks/plan_source_ab.py --a /tmp/before/src --b src --models resnet20_1w1a resnet18_1w1a_imagenet

The file is exported by tree B (the format is the same on both sides, else the comparison is void and the
A worker says so when it loads the file). Needs a quiet machine: stop training runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WORKER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import recu.deploy
    model = recu.deploy.load(sys.argv[2], num_threads=int(sys.argv[3]))
    shape = json.loads(sys.argv[4])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(5):
        model(x)
    print(json.dumps({"ready": recu.deploy.__file__}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
        print(json.dumps(sorted(times)[len(times) // 2]), flush=True)
""")

SHAPES = {"resnet20_1w1a": [1, 3, 32, 32], "resnet18_1w1a_imagenet": [1, 3, 224, 224]}


def export_file(tree: str, model: str, out: Path) -> None:
    code = (f"import sys; sys.path.insert(0, {tree!r})\n"
            "import torch\nfrom recu import models\nfrom recu.deploy import export\n"
            f"torch.manual_seed(0)\nm = models.create({model!r}).eval()\n"
            "for mod in m.modules():\n"
            "    if isinstance(mod, torch.nn.BatchNorm2d):\n"
            "        mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.5, 2.0)\n"
            f"export(m, {str(out)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def start(tree: str, path: Path, threads: int, shape: list[int]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(max(threads, 1)))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, tree, str(path), str(threads), json.dumps(shape)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ready = json.loads(proc.stdout.readline())
    print(f"  worker {tree}: {ready['ready']}", flush=True)
    return proc


def ask(proc: subprocess.Popen, repeat: int) -> float:
    proc.stdin.write(f"{repeat}\n")
    proc.stdin.flush()
    return float(json.loads(proc.stdout.readline()))


def compare(a: str, b: str, model: str, threads: int, rounds: int, repeat: int, workdir: Path, batch: int = 1) -> dict:
    path = workdir / f"{model}.recu"
    if not path.exists():
        export_file(b, model, path)
    shape = [batch, *SHAPES[model][1:]]
    procs = {"A": start(a, path, threads, shape), "B": start(b, path, threads, shape)}
    times: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for r in range(rounds):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")
            for side in order:
                times[side].append(ask(procs[side], repeat))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "threads": threads, "a_ms": med["A"] * 1e3, "b_ms": med["B"] * 1e3,
            "ratio": med["B"] / med["A"], "a_rounds_ms": [t * 1e3 for t in times["A"]],
            "b_rounds_ms": [t * 1e3 for t in times["B"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="source folder of tree A (the one holding the recu package)")
    p.add_argument("--b", required=True, help="source folder of tree B")
    p.add_argument("--models", nargs="+", default=["resnet20_1w1a", "resnet18_1w1a_imagenet"], choices=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeat", type=int, default=0,
                   help="calls per round (0: 200 for ResNet-20, 20 for ResNet-18; divided by the batch)")
    args = p.parse_args()
    for tree in (args.a, args.b):
        if not (Path(tree) / "recu" / "__init__.py").is_file():
            p.error(f"{tree} holds no recu package (give the folder that contains recu/)")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            repeat = args.repeat or max(1, (200 if model == "resnet20_1w1a" else 20) // args.batch)
            for threads in args.threads:
                res = compare(os.path.abspath(args.a), os.path.abspath(args.b), model, threads, args.rounds, repeat,
                              Path(tmp), args.batch)
                print(f"{model} batch {args.batch}, {threads} thread(s): A {res['a_ms']:.3f} ms, B {res['b_ms']:.3f} ms, "
                      f"B/A {res['ratio']:.3f} (medians of {args.rounds} interleaved rounds of {repeat} calls; "
                      f"A rounds {min(res['a_rounds_ms']):.3f}-{max(res['a_rounds_ms']):.3f}, "
                      f"B rounds {min(res['b_rounds_ms']):.3f}-{max(res['b_rounds_ms']):.3f})", flush=True)


if __name__ == "__main__":
    main()
