"""`cmm-cache bench fit --protocol`: the whole few-shot protocol, end to end, on a synthetic cache.

What users run is `cmm-cache fit --shots 1,2,4,8,16 --seeds 1,2,3`: 15 runs,
each opening the cache, reading its few-shot subset (N = C·K·2 samples),
training 16k iterations, choosing alpha on val, scoring test and writing its
run folder. This benchmark writes a DTD-sized cache (47 classes, 1024-d,
1692 test images) to a temporary folder and times exactly that
(:func:`cmm_cache.runs.protocol.fit_run` + :func:`cmm_cache.runs.store.write_run`, the cache read once per process),
two ways:

* ``sequential`` — the runs one after another in this process, each choosing
  its threads as :func:`~cmm_cache.methods.trainers.cmm.trainer.train_cmm` does;
* ``parallel`` — the runs spread over one worker process per core, one thread
  each (:func:`cmm_cache.util.parallel.parallel_map`).

It reports the wall time of each, and where the time goes: the training loops,
the rest of each run (cache reads, set-up, alpha search, test evaluation,
writing), and what is left (worker start-up, idle cores at the end).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from cmm_cache.cache.reader import Split, open_cache
from cmm_cache.cache.writer import write_cache
from cmm_cache.datasets.fewshot import group_name
from cmm_cache.runs.protocol import fit_run, read_once
from cmm_cache.runs.store import write_run
from cmm_cache.util.parallel import default_processes, parallel_map

DTD = {"classes": 47, "test_per_class": 36}  # DTD: 47 classes, 1692 test images


def write_synthetic_cache(path, classes=47, dim=1024, shots=(1, 2, 4, 8, 16), seeds=(1, 2, 3), test_per_class=36):
    """A schema-conformant cache with random features of the real shapes; returns its path."""

    rng = np.random.default_rng(0)
    kmax = max(shots)
    text = rng.standard_normal((classes, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    def images(labels, views):
        base = text[labels] + 0.05 * rng.standard_normal((len(labels), dim))
        feats = np.stack([base + 0.01 * rng.standard_normal(base.shape) for _ in range(views)], axis=1)
        return (7.0 * feats).astype(np.float16)

    ytr, yva, yte = (np.repeat(np.arange(classes), n) for n in (kmax, 4, test_per_class))
    splits = {
        "train": Split(images(ytr, 2), ytr, np.arange(len(ytr)), ["center", "hflip"]),
        "val": Split(images(yva, 1), yva, np.arange(len(yva)), ["center"]),
        "test": Split(images(yte, 1), yte, np.arange(len(yte)), ["center"]),
    }
    fewshot = {}
    for s in seeds:
        r = np.random.default_rng(100 + s)
        for k in shots:
            tr = np.concatenate([r.choice(np.flatnonzero(ytr == c), k, replace=False) for c in range(classes)])
            va = np.concatenate([r.choice(np.flatnonzero(yva == c), min(k, 4), replace=False) for c in range(classes)])
            fewshot[(k, s)] = (np.sort(tr), np.sort(va))
    return write_cache(
        path,
        dataset="synthetic-dtd",
        backbone="synthetic",
        provenance={"model": "synthetic", "pretrained": None, "embed_dim": dim, "note": "bench_protocol"},
        classnames=[f"class {i}" for i in range(classes)],
        text={"synthetic": (text, ["a photo of a {}."])},
        default_templates="synthetic",
        splits=splits,
        fewshot=fewshot,
    )


@functools.lru_cache(maxsize=4)
def _open(path: str):
    """One open cache per process (a worker keeps it across its jobs, as one `fit` process does)."""

    return read_once(open_cache(path))


def protocol_run(job: tuple) -> dict:
    """One run of the protocol, as `cmm-cache fit` does it (module level: it runs in worker processes too)."""

    cache_path, shots, seed, cfg_kw, out_dir = job
    t0 = time.perf_counter()
    cache = _open(cache_path)
    result, arrays = fit_run(cache, shots, seed, options=cfg_kw)
    t1 = time.perf_counter()
    write_run(Path(out_dir) / group_name(shots, seed), result, arrays, cache)
    t2 = time.perf_counter()
    return {
        "shots": shots,
        "seed": seed,
        "seconds": t2 - t0,
        "loop_seconds": result["fit_seconds"],
        "other_seconds": (t2 - t0) - result["fit_seconds"],
        "write_seconds": t2 - t1,
        "test_acc": result["test_acc"],
    }


def bench_protocol(
    classes=DTD["classes"],
    dim=1024,
    shots=(1, 2, 4, 8, 16),
    seeds=(1, 2, 3),
    iterations=16000,
    test_per_class=DTD["test_per_class"],
    modes=("sequential", "parallel"),
    processes=None,
    log=print,
) -> dict:
    """Wall time of the whole protocol in each mode, with its breakdown."""
    log = log or _quiet

    out = {"classes": classes, "dim": dim, "shots": list(shots), "seeds": list(seeds), "iterations": iterations}
    with tempfile.TemporaryDirectory(prefix="cmm-bench-") as tmp:
        t0 = time.perf_counter()
        path = write_synthetic_cache(Path(tmp) / "synthetic.h5", classes, dim, shots, seeds, test_per_class)
        out["cache_write_seconds"] = time.perf_counter() - t0
        cfg_kw = {"iterations": iterations}
        log(
            f"protocol: {len(shots) * len(seeds)} runs ({classes} classes × {dim}-d, "
            f"shots {list(shots)}, seeds {list(seeds)})"
        )
        for mode in modes:
            jobs = [(str(path), k, s, cfg_kw, str(Path(tmp) / mode)) for k in shots for s in seeds]
            procs = 1 if mode == "sequential" else (processes or default_processes(len(jobs)))
            t0 = time.perf_counter()
            runs = parallel_map(protocol_run, jobs, processes=procs)
            wall = time.perf_counter() - t0
            loops = sum(r["loop_seconds"] for r in runs)
            other = sum(r["other_seconds"] for r in runs)
            out[mode] = {
                "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                "write_seconds_sum": sum(r["write_seconds"] for r in runs),
                "processes": procs,
                "seconds": wall,
                "loop_seconds_sum": loops,
                "other_seconds_sum": other,
                "overhead_seconds": wall - (loops + other) / procs,
                "runs": runs,
            }
            log(
                f"  {mode:10s} ({procs} process{'es' if procs > 1 else ''}): {wall:6.1f} s  "
                f"(sums over runs: loops {loops:.1f} s, rest of the runs {other:.1f} s of which writing "
                f"{out[mode]['write_seconds_sum']:.1f} s; start-up/idle {out[mode]['overhead_seconds']:.1f} s; "
                f"load average {out[mode]['load_average_after']})"
            )
    done = [m for m in modes if m in out]
    out["best_mode"] = min(done, key=lambda m: out[m]["seconds"])
    out["seconds"] = out[out["best_mode"]]["seconds"]
    log(f"protocol: {out['seconds']:.1f} s ({out['best_mode']})")
    return out


def _quiet(*args, **kwargs) -> None:
    pass
