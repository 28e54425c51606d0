"""Where a compiled plan's time goes: each row of the op table timed alone.

Runs the whole plan once (so every row's inputs sit in the arena), then times each row by itself
(best of 7 rounds of ``--repeat`` calls) and prints one line per row: op, output shape (NHWC), time.
A row run alone pays the fixed cost of one call from Python into numba (the cheapest rows show it,
about 2 us); the sum of the rows is therefore above the whole plan's time. Measure on a quiet machine.

    python benchmarks/plan_profile.py MODEL.recu [--batch 1] [--threads 1] [--kernel amx|avx512|avx2|portable]
    python benchmarks/plan_profile.py resnet20_1w1a            # a registry model, exported with random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _model_file(target: str, folder: str) -> Path:
    if Path(target).is_file():
        return Path(target)
    from recu import models
    from recu.deploy import export

    path = Path(folder) / f"{target}.recu"
    export(models.create(target).eval(), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="a .recu file, or a registry model name (exported with random weights)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kernel", choices=["amx", "avx512", "avx2", "portable"], default=None)
    ap.add_argument("--repeat", type=int, default=0, help="calls per round (default: about 20 ms of work)")
    args = ap.parse_args()

    import numba

    from recu.deploy.runtime.kernels import plan_exec as pk
    from recu.deploy.runtime.kernels.cache import ensure_fresh_cache
    from recu.deploy.runtime.kernels.amx import TILE_CONFIG
    from recu.deploy.runtime.kernels.cpu import request_amx
    from recu.deploy.runtime.fileio import read_metadata, read_tensors
    from recu.deploy.runtime.plan import build_plan

    with tempfile.TemporaryDirectory() as tmp:
        path = _model_file(args.target, tmp)
        meta, tensors = read_metadata(path), read_tensors(path)
    spec = meta.get("model_spec") or {}
    size = 224 if str(spec.get("name", "")).endswith("imagenet") else 32
    numba.set_num_threads(args.threads)
    ensure_fresh_cache()  # a kernel file changed since the cache was written: recompile, not stale code
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    plan = build_plan(meta, tensors, x.shape, impl=args.kernel, threads=args.threads)
    if plan.uses_amx:
        request_amx()

    def run(ops: np.ndarray) -> None:
        if plan.uses_amx:
            pk.run_plan_amx(ops, plan.vals, plan.arena, plan.fp, plan.u64, plan.i8, plan.i64, plan.pk, plan.x8,
                            TILE_CONFIG, x)
        else:
            pk.run_plan(ops, plan.vals, plan.arena, plan.fp, plan.u64, plan.pk, x)

    def best(ops: np.ndarray, repeat: int) -> float:
        run(ops)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(repeat):
                run(ops)
            times.append((time.perf_counter() - start) / repeat)
        return min(times)

    once = best(plan.ops, 1)
    repeat = args.repeat or max(1, int(0.02 / max(once, 1e-6)))
    whole = best(plan.ops, repeat)
    names = {v: k[3:] for k, v in vars(pk).items() if k.startswith("OP_")}
    total = 0.0
    print(f"{path.name}: batch {args.batch}, {args.threads} thread(s), {len(plan.ops)} rows")
    for k in range(len(plan.ops)):
        t = best(plan.ops[k:k + 1], max(repeat * 4, 10))
        total += t
        shape = tuple(int(v) for v in plan.vals[plan.ops[k, pk.F_OUT]][1:])
        print(f"{k:3d}  {names[int(plan.ops[k, pk.F_OP])]:16s} {str(shape):20s} {t * 1e6:10.1f} us")
    print(f"sum of the rows {total * 1e6:.1f} us; the whole plan {whole * 1e6:.1f} us")


if __name__ == "__main__":
    main()
