"""How torch.compile would do as the trainer's CPU path: compile cost (cold and warm cache) and step time.

Measured against the compiled C loop that the trainer uses (cmm_cache/cmm_loop.c).
Run it twice: the first run fills the inductor cache (cold compile), the second
reads it (warm):

    python tools/bench_torch_compile.py --cache-dir /tmp/inductor-cache
    python tools/bench_torch_compile.py --cache-dir /tmp/inductor-cache

Prints one JSON object. Not part of the package: a measurement for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True, help="TORCHINDUCTOR_CACHE_DIR (empty: cold compile)")
    ap.add_argument("--classes", type=int, default=47)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = a.cache_dir
    cold = not os.path.isdir(a.cache_dir) or not os.listdir(a.cache_dir)

    import torch

    from cmm_cache.bench.fit import synthetic
    from cmm_cache.methods.trainers import ops
    from cmm_cache.methods.trainers.cmm.torch_loop import clip_prob_true, cmm_grads
    from cmm_cache.methods.trainers.cmm.trainer import Runtime, TrainConfig, draw_batches, train_cmm

    torch.set_num_threads(a.threads)
    x, y, T0 = synthetic(a.classes, a.dim, 16)
    cfg = TrainConfig(iterations=a.steps)
    p0y = clip_prob_true(x, y, T0)
    batches = draw_batches(len(x), a.steps, cfg.batch_size, 1)
    W = torch.zeros(a.dim, a.dim)
    T = T0.clone()
    ops._probed["onednn"] = False  # plain matmuls in the traced step: inductor picks its own kernels
    opt = ops.AdamW([W, T], cfg.weight_decay)  # the trainer's fused AdamW, outside the compiled graph
    grads = torch.compile(lambda W, T, xb, yb, pb: cmm_grads(W, T, T0, xb, yb, pb, cfg)[1:])

    def step(W, T, xb, yb, pb):
        gW, gT = grads(W, T, xb, yb, pb)
        opt.step([gW.contiguous(), gT], 1e-4)

    t0 = time.perf_counter()
    with torch.no_grad():
        step(W, T, x[batches[0]], y[batches[0]], p0y[batches[0]])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in range(1, a.steps):
            b = batches[t]
            step(W, T, x[b], y[b], p0y[b])
    per_step = (time.perf_counter() - t0) / (a.steps - 1)
    t0 = time.perf_counter()
    r = train_cmm(x, y, T0, TrainConfig(iterations=a.steps), runtime=Runtime(threads=a.threads))
    kernel_step = (time.perf_counter() - t0) / a.steps
    out = {
        "torch": torch.__version__,
        "cache": "cold" if cold else "warm",
        "first_call_seconds": first,
        "compiled_step_ms": 1e3 * per_step,
        "trainer_step_ms": 1e3 * kernel_step,
        "trainer_engine": r.engine,
        "threads": a.threads,
        "shape": [a.classes, a.dim],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
