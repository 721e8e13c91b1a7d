"""Scoring a fitted CMM model: logits, fusion, alpha on val, accuracies, shift classes.

    cmm logits  = 100 · normalize(v̂ W + v̂) Tᵀ     (Tᵀ row-normalized if the run chose so)
    clip logits = 100 · v̂ T0ᵀ                      (zero-shot CLIP)
    prob fusion:  alpha · softmax(cmm) + softmax(clip)
    logit fusion: alpha · cmm + clip

Alpha is chosen on the few-shot *val* subset only: :func:`select_alpha` takes
val arrays and nothing else, so test labels cannot reach it. Test accuracy is
then computed once with that alpha (:func:`evaluate`), in chunks so a 50k×1000
ImageNet test set never needs its full logit matrices in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from .cache import Cache, Split
from .errors import CmmError
from .fit import normalize_rows
from .heads import CMMHead, Head, Model, fuse, logits

__all__ = ["ALPHA_GRID", "Model", "logits", "fuse", "split_features", "select_alpha", "evaluate", "evaluate_head"]

ALPHA_GRID = [round(0.1 * i, 1) for i in range(1, 21)]  # 0.1, 0.2, ..., 2.0 (paper §4.1)


def split_features(split: Split, rows: np.ndarray | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized features of the first ("center") view and labels, optionally only `rows`."""
    view = split.views.index("center") if "center" in split.views else 0
    feats = split.features if rows is None else split.features[np.asarray(rows)]
    labels = split.labels if rows is None else split.labels[np.asarray(rows)]
    x = torch.from_numpy(np.ascontiguousarray(feats[:, view], dtype=np.float32))
    return normalize_rows(x).to(device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def _pct(correct: int | float, n: int) -> float:
    return 100.0 * float(correct) / max(n, 1)


def select_alpha(
    model: Model, x_val: torch.Tensor, y_val: torch.Tensor, grid=ALPHA_GRID, fixed: float | None = None
) -> tuple[float | None, float]:
    """Alpha with the best val accuracy (ties: the smallest), and that accuracy.

    Only val features and labels come in. With `fixed` the grid is skipped;
    a CMM-only model has no alpha (None) and is scored on its own logits.
    """
    with torch.no_grad():
        cmm, clip = logits(model, x_val)
        if model.cmm_only:
            return None, _pct((cmm.argmax(1) == y_val).sum(), len(y_val))
        best = (None, -1.0)
        for a in [fixed] if fixed is not None else grid:
            acc = _pct((fuse(cmm, clip, a, model.fusion).argmax(1) == y_val).sum(), len(y_val))
            if acc > best[1]:
                best = (float(a), acc)
    return best


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
    head's :meth:`~cmm_cache.heads.Head.components`. With `classes`, only those
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
    return {k: _pct(v, len(y)) for k, v in hits.items()}


def evaluate(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float | None,
    classes: torch.Tensor | None = None,
    chunk: int = 8192,
) -> dict:
    """Accuracies (percent) of the fused CMM model with `alpha`, of zero-shot CLIP and
    of the CMM logits alone (keys acc, zero_shot_acc, cmm_only_acc)."""
    return evaluate_head(CMMHead(model, alpha), x, y, classes, zero_shot_T0=model.T0, chunk=chunk)


# ----------------------------------------------------------------------------
# Shift sets: which of the run's classes a shift cache scores


def shift_classes(run_classnames: list[str], run_wnids: list[str] | None, shift: Cache) -> np.ndarray:
    """Columns of the run's class space that the shift cache's labels refer to.

    `classes/imagenet_index` maps each shift class to its ImageNet class; where
    both sides carry WordNet ids they must agree row by row. A cache without
    imagenet_index is accepted only if it has exactly the run's classes.
    """
    C = len(run_classnames)
    if shift.imagenet_index is None:
        same = shift.wnids == run_wnids if (shift.wnids and run_wnids) else shift.classnames == run_classnames
        if shift.num_classes != C or not same:
            raise CmmError(
                f"{shift.path} ({shift.dataset}, {shift.num_classes} classes) does not share the run's class space "
                f"({C} classes) and has no classes/imagenet_index to map it.",
                "Evaluate a shift cache extracted for the ImageNet family against an ImageNet run.",
            )
        return np.arange(C)
    idx = np.asarray(shift.imagenet_index, dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= C or len(np.unique(idx)) != len(idx):
        raise CmmError(
            f"{shift.path}: classes/imagenet_index does not index into the run's {C} classes "
            f"(range {idx.min() if idx.size else '-'}..{idx.max() if idx.size else '-'}).",
            "Is the run an ImageNet run? Shift sets can only be scored against one.",
        )
    if shift.wnids is not None and run_wnids is not None:
        bad = [i for i, j in enumerate(idx) if shift.wnids[i] != run_wnids[j]]
        if bad:
            i = bad[0]
            raise CmmError(
                f"{shift.path}: WordNet ids disagree with the run's classes for {len(bad)} of {len(idx)} classes "
                f"(first: shift class {i} is {shift.wnids[i]}, run class {idx[i]} is {run_wnids[idx[i]]}).",
                "The shift cache and the run use different class lists; re-extract one of them.",
            )
    return idx
