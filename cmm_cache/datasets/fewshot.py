"""Few-shot subsets (CoOp protocol): K images per class from train, min(K, 4) per class from val.

Where published index files are shipped (`data_manifests/<name>/fewshot.npz`)
exactly those are used. Any other (shots, seed) is a seeded draw:

- train: for each class, a permutation of that class's rows drawn from
  ``numpy.random.default_rng([seed, 0])``, first K taken. The same seed gives
  nested subsets (the 4-shot set contains the 2-shot set).
- val: the same with ``default_rng([seed, 1])`` over the val rows, first
  min(K, 4) taken.

Train and val subsets are disjoint because the train and val split lists hold
different images (checked when a dataset is loaded). A class with fewer
images than asked for is an error, never a silent smaller subset.
"""

from __future__ import annotations

import re

import numpy as np

from cmm_cache.errors import CmmError

VAL_CAP = 4
GROUP_RE = re.compile(r"^shot_(\d+)-seed_(\d+)$")


def val_shots(shots: int) -> int:
    """Validation images per class for a K-shot run (paper protocol)."""
    return min(int(shots), VAL_CAP)


def group_name(shots: int, seed: int) -> str:
    return f"shot_{int(shots)}-seed_{int(seed)}"


def parse_group(name: str) -> tuple[int, int]:
    m = GROUP_RE.match(name)
    if not m:
        raise ValueError(f"not a few-shot group name: {name!r}")
    return int(m.group(1)), int(m.group(2))


def load_published(path) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """A shipped `fewshot.npz` -> {(K, seed): (train_rows, val_rows)} as int64."""
    out: dict = {}
    with np.load(path) as z:
        for key in z.files:
            group, part = key.split("/")
            k = parse_group(group)
            out.setdefault(k, {})[part] = z[key].astype(np.int64)
    return {k: (v["train"], v["val"]) for k, v in sorted(out.items())}


def _per_class(
    labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator, split: str, classnames=None
) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    picked = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n:
            name = f"'{classnames[c]}'" if classnames is not None else str(c)
            raise CmmError(
                f"Class {name} has {len(rows)} {split} image(s); {n} are needed for this few-shot subset.",
                f"Use fewer shots, or add {split} images for that class.",
            )
        picked.append(rows[rng.permutation(len(rows))[:n]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def draw(
    train_labels, val_labels, shots: int, seed: int, num_classes: int, classnames=None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded draw: K per class from train, min(K, 4) per class from val (int64 row positions)."""
    if shots < 1:
        raise CmmError(f"--shots must be at least 1 (got {shots}).")
    tr = _per_class(train_labels, int(shots), num_classes, np.random.default_rng([int(seed), 0]), "train", classnames)
    va = _per_class(val_labels, val_shots(shots), num_classes, np.random.default_rng([int(seed), 1]), "val", classnames)
    return tr, va


def check_subset(train_rows, val_rows, train_labels, val_labels, shots: int, num_classes: int) -> list[str]:
    """Problems with a few-shot subset under the protocol (empty list = fine)."""
    p = []
    for name, rows, labels, k in (
        ("train", train_rows, train_labels, shots),
        ("val", val_rows, val_labels, val_shots(shots)),
    ):
        rows = np.asarray(rows)
        if len(np.unique(rows)) != len(rows):
            p.append(f"{name}: repeated rows")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(labels)):
            p.append(f"{name}: row out of range")
            continue
        counts = np.bincount(np.asarray(labels)[rows], minlength=num_classes)
        if not np.all(counts == k):
            bad = np.flatnonzero(counts != k)
            p.append(f"{name}: {len(bad)} classes do not have {k} images (e.g. class {bad[0]}: {counts[bad[0]]})")
    return p
