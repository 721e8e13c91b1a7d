"""`cmm-cache bench methods`: time each registered method's fit on synthetic features of a given size.

The features are random but shaped like CLIP's: class concepts on the unit sphere, images =
concept + a common image offset + noise, per-template text = concept + a text offset + noise
(a modality gap, so zero-shot is imperfect and every method has something to learn). Only the
fit is timed (what ``result.json``'s ``fit_seconds`` reports), after one untimed warm-up fit of
the first method so one-time imports do not land on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cmm_cache.bench.fit import machine_line
from cmm_cache.cache.reader import Split, open_cache
from cmm_cache.cache.writer import write_cache
from cmm_cache.methods.base import FitData
from cmm_cache.methods.registry import get_method, registered_methods
from cmm_cache.runs.compare import compare


def synthetic_fit_data(classes=100, dim=1024, shots=16, views=2, templates=7, val_per_class=4, seed=0) -> FitData:
    """A FitData of the given size (every view a sample, per-template text embeddings)."""
    g = torch.Generator().manual_seed(seed)
    # Concepts share a 16-d subspace, so classes overlap and no method is trivially perfect.
    concept = F.normalize(torch.randn(classes, 16, generator=g) @ torch.randn(16, dim, generator=g), dim=1)
    gap_i, gap_t = (0.6 * F.normalize(torch.randn(2, dim, generator=g), dim=1)).unbind(0)

    def images(labels, n_views):
        base = concept[labels] + gap_i + 3.0 * torch.randn(len(labels), dim, generator=g) / dim**0.5
        out = [base] + [base + 0.1 * torch.randn(base.shape, generator=g) / dim**0.5 for _ in range(n_views - 1)]
        return F.normalize(torch.stack(out, 1), dim=-1)

    y_img = torch.arange(classes).repeat_interleave(shots)
    x = images(y_img, views).reshape(-1, dim)
    per = concept[:, None] + gap_t + 3.0 * torch.randn(classes, templates, dim, generator=g) / dim**0.5
    y_val = torch.arange(classes).repeat_interleave(val_per_class)
    return FitData(
        x_train=x,
        y_train=y_img.repeat_interleave(views),
        train_image=torch.arange(len(y_img)).repeat_interleave(views),
        x_val=images(y_val, 1)[:, 0],
        y_val=y_val,
        T0=F.normalize(per.mean(1), dim=1),
        classnames=[f"class {i}" for i in range(classes)],
        shots=shots,
        seed=1,
        templates=[f"template {i}" for i in range(templates)],
        _per_template=lambda: per.numpy(),
    )


def bench_methods(
    methods: list[str] | None = None,
    classes=100,
    dim=1024,
    shots=16,
    repeat=1,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fit seconds per method (fastest of `repeat`), with each one's val accuracy and chosen hparams."""
    names = methods or [m for m in registered_methods() if not get_method(m).trained]
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    where = machine_line()
    try:
        data = synthetic_fit_data(classes, dim, shots)
        warm = next((get_method(n) for n in names if get_method(n).inputs == "features"), None)
        if warm is not None:
            warm.fit(data, warm.resolve({}))
        rows = []
        for name in names:
            m = get_method(name)
            if m.inputs == "block_inputs":  # synthetic features have no tower to cut: its own benchmark times it
                rows.append({"method": name, "trained": m.trained, "skipped": "cmm-cache bench partial-ft"})
                if log:
                    log(f"  {name:22s} see `cmm-cache bench partial-ft` (it trains on block inputs)")
                continue
            best = None
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = m.fit(data, m.resolve({}))
                wall = time.perf_counter() - t0
                best = wall if best is None else min(best, wall)
            rows.append(
                {
                    "method": name,
                    "trained": m.trained,
                    "seconds": round(best, 4),
                    "val_acc": r.val_acc,
                    "hparams": r.hparams,
                }
            )
            if log:
                log(f"  {name:22s} {best:8.3f} s   val {r.val_acc:6.2f} %   {r.hparams}")
    finally:
        torch.set_num_threads(old)
    return {
        "classes": classes,
        "dim": dim,
        "shots": shots,
        "train_samples": int(len(data.x_train)),
        "val_samples": int(len(data.x_val)),
        "torch_threads": threads or old,
        "machine": where,
        "repeat": repeat,
        "methods": rows,
    }


def synthetic_cache(
    path,
    classes=47,
    dim=1024,
    shots=(1, 2, 4, 8, 16),
    seeds=(1, 2, 3),
    templates=1,
    train_per_class=16,
    val_per_class=4,
    test_per_class=36,
    seed=0,
):
    """A cache file of the given size (DTD's shape by default: 47 classes, 36 test images per class,
    1 template as `extract --dataset dtd` writes by default) with few-shot subsets for every (K, seed)."""
    import numpy as np

    full = synthetic_fit_data(classes, dim, train_per_class, 2, templates, val_per_class + test_per_class, seed)
    n_val = classes * (val_per_class + test_per_class)
    xv, yv = full.x_val.view(classes, -1, dim), full.y_val.view(classes, -1)
    val_x, val_y = xv[:, :val_per_class].reshape(-1, dim), yv[:, :val_per_class].reshape(-1)
    test_x, test_y = xv[:, val_per_class:].reshape(-1, dim), yv[:, val_per_class:].reshape(-1)
    assert len(val_y) + len(test_y) == n_val
    per = full._per_template()
    ytr = full.y_train.view(-1, 2)[:, 0].numpy()
    fewshot = {}
    for s in seeds:
        r = np.random.default_rng(1000 + s)
        for k in shots:
            tr = np.concatenate([r.choice(np.flatnonzero(ytr == c), k, replace=False) for c in range(classes)])
            va = np.concatenate(
                [r.choice(np.flatnonzero(val_y.numpy() == c), min(k, 4), replace=False) for c in range(classes)]
            )
            fewshot[(k, s)] = (np.sort(tr), np.sort(va))

    def split(x, y, views):
        return Split(x.view(len(y), views, dim).numpy(), y.numpy(), np.arange(len(y)), ["center", "hflip"][:views])

    return write_cache(
        path,
        dataset="synthetic",
        backbone=f"synthetic-{dim}d",
        provenance={"model": "synthetic", "embed_dim": dim, "note": "cmm_cache.bench.methods.synthetic_cache"},
        classnames=list(full.classnames),
        text={"synthetic": (full.T0.numpy(), [f"template {j} {{}}" for j in range(templates)], per)},
        default_templates="synthetic",
        splits={
            "train": split(full.x_train, torch.from_numpy(ytr), 2),
            "val": split(val_x, val_y, 1),
            "test": split(test_x, test_y, 1),
        },
        fewshot=fewshot,
    )


def bench_compare(
    methods="all",
    classes=47,
    dim=1024,
    shots=(1, 2, 4, 8, 16),
    seeds=(1, 2, 3),
    max_iterations=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Wall time of `compare` (all fits, test evaluations and run folders) on a synthetic cache of that size."""
    import tempfile
    from pathlib import Path

    where = machine_line()  # before the benchmark's own load
    with tempfile.TemporaryDirectory(prefix="cmm-bench-compare-") as tmp:
        cache = open_cache(synthetic_cache(Path(tmp) / "bench.h5", classes, dim, shots, seeds))
        t0 = time.perf_counter()

        def progress(done, total, r):
            if log:
                log(
                    f"  [{done}/{total}] {r['method']:22s} {r['shots']:>2}-shot seed {r['seed']}: "
                    f"{r['fit_seconds'] or 0:.2f} s fit, test {r['test_acc']:.2f} %"
                )

        out = compare(
            cache,
            methods,
            list(shots),
            list(seeds),
            max_iterations=max_iterations,
            runs_root=Path(tmp) / "runs",
            progress=progress,
        )
        wall = time.perf_counter() - t0
    per_method = {}
    for r in out["runs"]:
        per_method[r["method"]] = per_method.get(r["method"], 0.0) + float(r["fit_seconds"] or 0.0)
    return {
        "classes": classes,
        "dim": dim,
        "shots": list(shots),
        "seeds": list(seeds),
        "runs": len(out["runs"]),
        "max_iterations": max_iterations,
        "wall_seconds": round(wall, 1),
        "fit_seconds_per_method": {k: round(v, 2) for k, v in per_method.items()},
        "table": out["table"],
        "machine": where,
    }
