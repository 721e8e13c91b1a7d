"""Shift sets: which of an ImageNet run's classes a shift cache (-V2, -Sketch, -A, -R) scores.

ImageNet-A and -R hold 200 of the 1000 classes, matched by WordNet id; only those rows are scored.
"""

from __future__ import annotations

import numpy as np

from cmm_cache.cache.reader import Cache
from cmm_cache.errors import CmmError


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
