"""Datasets resolved against a data root: image paths, labels, classes, templates.

INTERFACE STUB (the names below are the contract other modules code against;
the implementation is filled in by the data-layer work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SplitList:
    """One split in the manifest's split-list order: absolute image paths and int64 labels."""

    paths: list[str]
    labels: np.ndarray


@dataclass
class Dataset:
    """A dataset ready for extraction.

    - `splits`: split name -> SplitList; "train", "val", "test" for ordinary
      datasets, only "test" for shift sets.
    - `fewshot(shots, seed)` -> (train_rows, val_rows): int64 positions into
      `splits["train"]` / `splits["val"]` (published indices where shipped,
      else a seeded draw of K per class from train and min(K, 4) from val).
    - `templates`: template-set name -> list of templates containing "{}".
    - `wnids`: WordNet ids (ImageNet family only); `imagenet_index`: for shift
      sets, each class's index among the 1000 ImageNet classes.
    """

    name: str
    classnames: list[str]
    templates: dict[str, list[str]]
    default_templates: str
    splits: dict[str, SplitList]
    manifest_sha256: str
    wnids: list[str] | None = None
    imagenet_index: list[int] | None = None
    root: Path | None = None
    fewshot_indices: dict = field(default_factory=dict)  # (K, seed) -> (train_rows, val_rows), published ones

    @property
    def is_shift(self) -> bool:
        return self.imagenet_index is not None

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def verify(self, rows: dict[str, np.ndarray] | None = None) -> None:
        """Raise CmmError naming how many files are missing (first few, expected layout)."""
        raise NotImplementedError


def load_dataset(name_or_path: str, data_root=None, *, download: bool = False, cache_root=None) -> Dataset:
    """Resolve a registered name/alias, a manifest file, an image folder or a CSV into a Dataset."""
    raise NotImplementedError
