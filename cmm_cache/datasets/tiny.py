"""`tiny`: a synthetic dataset drawn with numpy, written once under `<cache-dir>/data/tiny/` (needs no data root)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import Dataset, LoadOptions, SplitList, make_dataset
from cmm_cache.util import paths as _paths
from cmm_cache.util.atomic import atomic_dir

TINY_VERSION = 1
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


def _tiny_image(c: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One small RGB image of class c: a coloured shape / pattern on a noisy grey background."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = rng.integers(90, 150, size=(size, size, 1)) + rng.integers(-15, 16, size=(size, size, 3))
    img = img.astype(np.float64)
    jitter = rng.integers(-25, 26, size=3)
    cy, cx = rng.integers(size // 3, 2 * size // 3 + 1, size=2)
    if c == 0:  # red square
        h = rng.integers(size // 5, size // 3)
        mask = (abs(yy - cy) <= h) & (abs(xx - cx) <= h)
        colour = (230, 30, 30)
    elif c == 1:  # green circle
        r = rng.integers(size // 5, size // 3)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = (30, 210, 40)
    elif c == 2:  # blue stripes
        period = rng.integers(4, 7)
        mask = ((yy + rng.integers(0, period)) // (period // 2 or 1)) % 2 == 0
        colour = (30, 50, 230)
    elif c == 3:  # yellow cross
        t = rng.integers(2, 4)
        mask = (abs(yy - cy) <= t) | (abs(xx - cx) <= t)
        colour = (235, 225, 30)
    else:  # purple checkerboard (and any further class: a shifted hue)
        cell = rng.integers(3, 6)
        mask = ((yy // cell) + (xx // cell)) % 2 == 0
        colour = (150, 40, 190) if c == 4 else tuple(int(v) for v in (np.array([60, 200, 200]) + 37 * c) % 256)
    img[mask] = np.asarray(colour) + jitter
    return np.clip(img, 0, 255).astype(np.uint8)


def _tiny_files(m) -> list[tuple[str, int, str]]:
    """(split, class, relative path) for every tiny image, in split-list order."""
    spec = m["split_source"]
    out = []
    for split in ("train", "val", "test"):
        for c, name in enumerate(m["classnames"]):
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            for n in range(spec["per_class"][split]):
                out.append((split, c, f"{split}/{c:02d}_{slug}/{n:03d}.png"))
    return out


def _complete(base: Path, stamp: dict, files) -> bool:
    try:
        return json.loads((base / ".complete.json").read_text()) == stamp and all((base / f).is_file() for f in files)
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return False


def ensure_tiny(m: dict | None = None, cache_root=None) -> Path:
    """Generate the tiny images under <cache-dir>/data/tiny/ unless they are all there; return that folder.

    Written to a temporary folder and renamed into place, so a half-written set
    is never trusted; two processes racing both end with the same complete set.
    """
    from PIL import Image

    m = m or _mf.get_manifest("tiny")
    spec = m["split_source"]
    base = _paths.cache_dir(cache_root) / "data" / "tiny"
    files = _tiny_files(m)
    stamp = {"version": TINY_VERSION, "spec": spec, "classnames": m["classnames"]}
    if _complete(base, stamp, [f for _, _, f in files]):
        return base
    size, seed = int(spec["image_size"]), int(spec["seed"])
    try:
        with atomic_dir(base) as tmp:
            for split, c, rel in files:
                rng = np.random.default_rng([seed, _SPLIT_ID[split], c, int(Path(rel).stem)])
                p = tmp / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_tiny_image(c, rng, size)).save(p, format="PNG")
            (tmp / ".complete.json").write_text(json.dumps(stamp))
    except OSError:
        if not _complete(base, stamp, [f for _, _, f in files]):  # else another process put the same set in place
            raise
    return base


def load_tiny(m: dict, opts: LoadOptions) -> Dataset:
    """The `synthetic` split source: the tiny images in split-list order (generated on first use)."""
    base = ensure_tiny(m, opts.cache_root)
    splits, rel_lists = {}, {}
    for split in ("train", "val", "test"):
        rows = [(c, rel) for s, c, rel in _tiny_files(m) if s == split]
        rel_lists[split] = ([r for _, r in rows], np.asarray([c for c, _ in rows], dtype=np.int64))
        splits[split] = SplitList([str(base / r) for _, r in rows], rel_lists[split][1])
    return make_dataset(
        m,
        splits,
        rel_lists,
        base,
        layout=m.get("layout", ""),
        get_hint="It is generated on demand; delete the folder to regenerate it.",
    )
