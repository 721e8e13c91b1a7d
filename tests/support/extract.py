"""A small synthetic image dataset for the extraction tests (PNG files in a temp folder).

Built directly on `cmm_cache.datasets.base.Dataset` (only its data fields are used),
with a deterministic few-shot draw, so these tests do not depend on the
manifest layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from cmm_cache.datasets.base import Dataset, SplitList

CLASSES = ["red square", "green stripe", "blue dot"]
SHOTS, SEEDS = [1, 2], [1, 2]
KW = dict(shots=SHOTS, seeds=SEEDS, chunk_rows=4, batch_size=4, num_workers=0)  # small chunks: several per split
TEMPLATES = {
    "simple": ["a photo of a {}."],
    "ensemble": ["a photo of a {}.", "a drawing of a {}.", "a close-up photo of the {}."],
}


class TinyDataset(Dataset):
    def fewshot(self, shots, seed):
        rng = np.random.default_rng(1000 * int(seed) + int(shots))
        out = []
        for split, k in (("train", int(shots)), ("val", min(int(shots), 4))):
            labels = self.splits[split].labels
            rows = []
            for c in range(len(self.classnames)):
                pool = np.flatnonzero(labels == c)
                rows.extend(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist())
            out.append(np.asarray(rows, dtype=np.int64))
        return out[0], out[1]

    def verify(self, rows=None):
        return None


def write_images(root: Path, per_class=(6, 3, 4), seed=0, fmt="png") -> dict[str, list[tuple[str, int]]]:
    """Write images under root/<split>/<class>/NNN.png; returns split -> [(path, label)]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(("train", "val", "test"), per_class):
        rows = []
        for c in range(len(CLASSES)):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
                arr[..., c] = np.clip(arr[..., c].astype(int) + 120, 0, 255).astype(np.uint8)
                arr[:, : w // 3] //= 3  # asymmetric, so the mirrored view differs
                p = d / f"{i:03d}.{fmt}"
                Image.fromarray(arr).save(p)
                rows.append((str(p), c))
        out[split] = rows
    return out


def make_dataset(root: Path, per_class=(6, 3, 4), shift=False, seed=0) -> TinyDataset:
    root = Path(root)
    listing = root / "listing.json"
    if listing.exists():
        rel = json.loads(listing.read_text())
    else:
        rows = write_images(root, per_class=per_class, seed=seed)
        rel = {s: [(str(Path(p).relative_to(root)), l) for p, l in r] for s, r in rows.items()}
        listing.write_text(json.dumps(rel))
    rows = {s: [(str(root / p), l) for p, l in r] for s, r in rel.items()}
    if shift:
        rows = {"test": rows["test"]}
    splits = {
        s: SplitList(paths=[p for p, _ in r], labels=np.asarray([l for _, l in r], dtype=np.int64))
        for s, r in rows.items()
    }
    sha = hashlib.sha256(json.dumps(rel, sort_keys=True).encode()).hexdigest()
    return TinyDataset(
        name="tinyset-shift" if shift else "tinyset",
        classnames=list(CLASSES),
        templates={k: list(v) for k, v in TEMPLATES.items()},
        default_templates="ensemble",
        splits=splits,
        manifest_sha256=sha,
        imagenet_index=[5, 17, 999] if shift else None,
        wnids=["n01", "n02", "n03"] if shift else None,
        root=root,
    )


class InjectedFailure(RuntimeError):
    """What `fail_after` raises: a run stopped from outside after some chunk files were written."""


def fail_after(chunks: int, kill: bool = False):
    """An `on_chunk` observer that stops the run once `chunks` chunk files are on disk.

    `kill=True` dies like `kill -9` instead (no cleanup code runs); use it in a subprocess.
    """

    def on_chunk(event):
        if event.written >= chunks:
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFailure(f"injected failure after {event.written} chunk(s)")

    return on_chunk


# --------------------------------------------------------------------------- fixtures of the extraction tests
# (import them into a test module to use them)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    make_dataset(root)
    return root


@pytest.fixture
def ds(image_root):
    return make_dataset(image_root)


@pytest.fixture(scope="module")
def reference(image_root, tmp_path_factory):
    """One uninterrupted extraction, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    from cmm_cache.extract.pipeline import extract

    r = extract(make_dataset(image_root), "tiny", out=out, record_last=False, **KW)
    return r, out
