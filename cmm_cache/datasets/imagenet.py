"""The ImageNet family: ImageNet's train/val/test lists (pool + rest of train) and the shift sets' class folders.

Readers take a validated manifest and the dataset's folder under the data root
and return ``(rel_lists, bases)`` like the CoOp readers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import RelLists, folder_missing, get_hint, indent, list_images
from cmm_cache.errors import CmmError


def rest_is_val(rel: str, frac: float) -> bool:
    """Whether an ImageNet train image outside the published pool is held out as val (stable, by sha1 of its path)."""
    h = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:4], "big")
    return h % 1000 < round(frac * 1000)


def list_class_folders(root: Path, keys) -> tuple[list[str], list[int], list[str]]:
    """Images of `root/<key>/` for each class key, in key order: (relative paths, labels, absent keys)."""
    rel, labels, absent = [], [], []
    for c, k in enumerate(keys):
        d = root / k
        if not d.is_dir():
            absent.append(k)
            continue
        names = list_images(d)
        rel += [f"{k}/{n}" for n in names]
        labels += [c] * len(names)
    return rel, labels, absent


def _pool(m: dict) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The shipped few-shot pool: per part (train, val) the relative paths and labels, in pool order."""
    wnids = m["wnids"]
    with np.load(_mf.data_file(m, m["split_source"]["pool"])) as z:
        paths = {
            part: [f"{wnids[c]}/{wnids[c]}_{n}.JPEG" for c, n in zip(z[f"{part}_class"], z[f"{part}_number"])]
            for part in ("train", "val")
        }
        labels = {part: z[f"{part}_class"].astype(np.int64) for part in ("train", "val")}
    return paths, labels


def _train_val(m: dict, train_dir: Path) -> RelLists:
    """Train / val lists: the pool first, then the rest of images/train split by `rest_is_val`."""
    pool, pool_lab = _pool(m)
    in_pool = set(pool["train"]) | set(pool["val"])
    rest = {"train": ([], []), "val": ([], [])}
    frac = float(m["split_source"].get("rest_val_fraction", 0.2))
    for c, w in enumerate(m["wnids"]):
        d = train_dir / w
        if not d.is_dir():
            continue  # verify() reports the pool images of a missing class folder
        for name in list_images(d):
            rel = f"{w}/{name}"
            if rel in in_pool:
                continue
            part = "val" if rest_is_val(rel, frac) else "train"
            rest[part][0].append(rel)
            rest[part][1].append(c)
    return {
        part: (pool[part] + rest[part][0], np.concatenate([pool_lab[part], np.asarray(rest[part][1], dtype=np.int64)]))
        for part in ("train", "val")
    }


def read_imagenet(m: dict, folder: Path) -> tuple[RelLists, dict]:
    """Train/val from images/train (pool + rest), test = images/val/<wnid>/* (the official validation set)."""
    img = folder / m["image_dir"]
    train_dir, val_dir = img / "train", img / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise CmmError(
                f"ImageNet folder not found: {d}",
                f"Expected layout under the data root:\n{indent(m['layout'])}\n{get_hint(m)}",
            )
    out = _train_val(m, train_dir)
    test_rel, test_lab, absent = list_class_folders(val_dir, m["wnids"])
    if absent:
        raise CmmError(
            f"ImageNet's validation folder {val_dir} lacks {len(absent)} of 1000 class folders (e.g. "
            f"{', '.join(absent[:3])}).",
            "The official val images must be arranged into one folder per WordNet id "
            "(images/val/n01440764/*.JPEG ...).\n"
            f"Expected layout under the data root:\n{indent(m['layout'])}",
        )
    out["test"] = (test_rel, np.asarray(test_lab, dtype=np.int64))
    # train/val paths are relative to images/train, test to images/val
    return out, {"train": train_dir, "val": train_dir, "test": val_dir}


def read_class_folders(m: dict, folder: Path) -> tuple[RelLists, dict]:
    """Shift sets: every image under `<image_dir>/<wnid or index>/`, sorted; test only."""
    src = m["split_source"]
    d = folder / m.get("image_dir", "")
    if not d.is_dir():
        raise folder_missing(m, d)
    keys = m["wnids"] if src.get("class_dirs", "wnid") == "wnid" else [str(i) for i in m["imagenet_index"]]
    rel, labels, absent = list_class_folders(d, keys)
    if absent:
        raise CmmError(
            f"{len(absent)} of {len(keys)} class folders of '{m['name']}' are missing in {d} (e.g. "
            f"{', '.join(absent[:5])}).",
            f"Expected layout under the data root:\n{indent(m['layout'])}\n{get_hint(m)}",
        )
    return {src.get("split", "test"): (rel, np.asarray(labels, dtype=np.int64))}, {}
