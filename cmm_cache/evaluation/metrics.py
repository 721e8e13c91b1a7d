"""Accuracy: the one definition every method's val search, ``fit``'s test score and ``eval`` use.

A head's test accuracy is computed in chunks (:func:`evaluate_head`), so a 50k × 1000 ImageNet test set never
needs its full logit matrices in memory. Features come out of a cache split through :func:`split_features`:
the centre view, L2-normalized, as every head expects.
"""

from __future__ import annotations

import numpy as np
import torch

from cmm_cache.cache.reader import Split
from cmm_cache.heads.base import Head, normalize_rows


def percent(correct: int | float, n: int) -> float:
    """``correct`` of ``n`` as a percentage (0 for an empty set)."""
    return 100.0 * float(correct) / max(n, 1)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (%) of the arg-max of ``logits`` [n, C] against labels ``y`` [n] (ties: the first class)."""
    return percent(int((logits.argmax(1) == y).sum()), len(y))


def head_accuracy(head: Head, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy (%) of a head on normalized features: what every method's val search compares."""
    with torch.no_grad():
        return accuracy(head.logits(x), y)


def split_features(split: Split, rows: np.ndarray | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized features of the first ("center") view and labels, optionally only `rows`."""
    view = split.views.index("center") if "center" in split.views else 0
    feats = split.features if rows is None else split.features[np.asarray(rows)]
    labels = split.labels if rows is None else split.labels[np.asarray(rows)]
    x = torch.from_numpy(np.ascontiguousarray(feats[:, view], dtype=np.float32))
    return normalize_rows(x).to(device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def evaluate_head(
    head: Head,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: torch.Tensor | None = None,
    zero_shot_T0: torch.Tensor | None = None,
    chunk: int = 8192,
) -> dict:
    """Accuracies (percent) of any head on normalized features x with labels y.

    Returns ``acc`` (the head's prediction), ``zero_shot_acc`` when the text
    classifier ``zero_shot_T0`` is given, and ``<name>_acc`` for each of the
    head's :meth:`~cmm_cache.heads.base.Head.components`. With `classes`, only those
    classes are scored (the labels y then index into `classes`, as for
    ImageNet-A/-R). Chunked, so a 50k×1000 test set never needs its full logit
    matrices in memory.
    """
    hits: dict[str, int] = {}
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            parts = head.all_logits(xb, classes)
            if zero_shot_T0 is None:
                parts.pop("zero_shot", None)
            elif "zero_shot" not in parts:
                T0 = zero_shot_T0 if classes is None else zero_shot_T0[classes]
                parts["zero_shot"] = xb @ T0.t()
            for name, z in parts.items():
                key = "acc" if name == "head" else f"{name}_acc"
                hits[key] = hits.get(key, 0) + int((z.argmax(1) == yb).sum())
    return {k: percent(v, len(y)) for k, v in hits.items()}


def block_input_chunks(cache, split: str, device="cpu", chunk: int = 256):
    """Float32 chunks [m, *shape] of a split's cached block inputs (centre view), in row order, from disk."""
    views = cache.block_views(split)
    c = views.index("center") if "center" in views else 0
    for _, blk in cache.iter_block_inputs(split, chunk):
        yield torch.from_numpy(np.ascontiguousarray(blk[:, c], dtype=np.float32)).to(device)


def score_test(
    head: Head,
    cache,
    x: torch.Tensor,
    y: torch.Tensor,
    zero_shot_T0: torch.Tensor | None = None,
    device="cpu",
    classes: torch.Tensor | None = None,
    split: str = "test",
) -> dict:
    """:func:`evaluate_head` for any head on a cache split whose normalized features are `x` (labels `y`).

    A head that consumes block inputs (``head.input == "block_inputs"``: partial finetuning) is scored on the
    split's cached block inputs, read chunk by chunk; its zero-shot accuracy still comes from `x`."""
    if getattr(head, "input", "features") == "features":
        return evaluate_head(head, x, y, classes=classes, zero_shot_T0=zero_shot_T0)
    hits, o = {}, 0
    with torch.no_grad():
        for xb in block_input_chunks(cache, split, device):
            yb = y[o : o + len(xb)]
            o += len(xb)
            for name, z in head.all_logits(xb, classes).items():
                key = "acc" if name == "head" else f"{name}_acc"
                hits[key] = hits.get(key, 0) + int((z.argmax(1) == yb).sum())
    if o != len(y):
        from cmm_cache.errors import CmmError

        raise CmmError(f"{cache.path}: {o} block-input rows in split '{split}' for {len(y)} feature rows.")
    out = {k: percent(v, len(y)) for k, v in hits.items()}
    if zero_shot_T0 is not None:
        T0 = zero_shot_T0 if classes is None else zero_shot_T0[classes]
        zs = sum(int(((x[i : i + 8192] @ T0.t()).argmax(1) == y[i : i + 8192]).sum()) for i in range(0, len(x), 8192))
        out["zero_shot_acc"] = percent(zs, len(y))
    return out
