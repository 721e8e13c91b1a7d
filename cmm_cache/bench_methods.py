"""`cmm-cache bench methods`: time each registered method's fit on synthetic features of a given size.

The features are random but shaped like CLIP's: class concepts on the unit sphere, images =
concept + a common image offset + noise, per-template text = concept + a text offset + noise
(a modality gap, so zero-shot is imperfect and every method has something to learn). Only the
fit is timed (what ``result.json``'s ``fit_seconds`` reports), after one untimed warm-up fit of
the first method so one-time imports do not land on it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .methods import FitData, get_method, registered_methods


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
    try:
        data = synthetic_fit_data(classes, dim, shots)
        warm = get_method(names[0])
        warm.fit(data, warm.resolve({}))
        rows = []
        for name in names:
            m = get_method(name)
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
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "repeat": repeat,
        "methods": rows,
    }
