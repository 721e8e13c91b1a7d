"""Three small image folders of your own, extracted with the `tiny` backbone: the benchmark's test bed.

Each folder holds 14 images per class (red, green, blue: the class's channel raised by `boost`), so a
50/20/30 % split gives 7 train, 2-3 val and 4-5 test images per class. Different boosts make the datasets
unequally hard, so methods, shots and seeds give different accuracies (a report of identical numbers would
prove little).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = {"alpha": 35, "beta": 45, "gamma": 60}  # name -> boost of the class channel
SHOTS, SEEDS = [1, 2], [1, 2]
METHODS = ["zero-shot", "cross-modal-lp", "cmm"]
# Small schedules that still learn something on these images (no --max-iterations: it would cap both alike).
OPTIONS = {"cmm": {"lr": 0.01, "iterations": 100}, "cross-modal-lp": {"batch_size": [4], "iterations": 300}}


def write_colour_folder(root: Path, boost: int, per_class: int = 14, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed + boost)
    for c, name in enumerate(("red", "green", "blue")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256 - boost, size=(32, 32, 3), dtype=np.uint8)
            arr[..., c] += np.uint8(boost)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


def make_three(base: Path) -> tuple[Path, list[str]]:
    """Write and extract the three folders under `base`; (cache dir, [folder paths])."""
    from cmm_cache.extract.pipeline import extract

    cache_dir, folders = base / "cache", []
    for name, boost in DATASETS.items():
        folder = write_colour_folder(base / "data" / name, boost)
        extract(str(folder), "tiny", cache_root=cache_dir, shots=SHOTS, seeds=SEEDS, num_workers=0, record_last=False)
        folders.append(str(folder))
    return cache_dir, folders
