"""Synthetic schema-conformant caches with a built-in modality gap.

Each class k has a concept c_k. Text features are  normalize(c_k + gap_t + τ ξ_k):
the right concept, shifted by a common text offset and by a per-class error
(the prompt is an imperfect description). Image features are
normalize(R c_k + gap_i + σ ε): the concept seen through a fixed linear
distortion R (the modality gap is not just an offset), plus a common image
offset and per-image noise. Zero-shot CLIP (cosine to text) is therefore
mediocre, a shared map W can undo R from few shots, and T can fix the per-class
text errors: the situation CMM is built for.
"""

from __future__ import annotations

import numpy as np

from cmm_cache.cache.reader import Split
from cmm_cache.cache.writer import write_cache


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


class World:
    def __init__(self, C=12, d=32, seed=0, text_noise=2.0, img_noise=0.15, mix=1.5, gap=0.6):
        rng = np.random.default_rng(seed)
        self.C, self.d, self.img_noise = C, d, img_noise
        self.concepts = _unit(rng.standard_normal((C, d)))
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        self.R = (np.eye(d) + mix * q) / np.sqrt(1 + mix * mix)
        self.gap_i = gap * _unit(rng.standard_normal(d))
        self.gap_t = gap * _unit(rng.standard_normal(d))
        self.text = _unit(self.concepts + self.gap_t + text_noise * rng.standard_normal((C, d)) / np.sqrt(d)).astype(
            np.float32
        )
        self.rng = rng

    def images(self, labels, views=1, rng=None):
        rng = rng or self.rng
        base = self.concepts[labels] @ self.R.T + self.gap_i
        base = base + self.img_noise * rng.standard_normal(base.shape) / np.sqrt(self.d) * 3
        out = [base]
        for _ in range(views - 1):  # a flipped view: the same image, slightly different features
            out.append(base + 0.05 * rng.standard_normal(base.shape) / np.sqrt(self.d))
        # raw (un-normalized) features at CLIP-like scale, as the cache stores them
        return (np.stack(out, axis=1) * 7.0).astype(np.float16)


def make_cache(
    path,
    C=12,
    d=32,
    shots=(1, 2, 4),
    seeds=(1, 2, 3),
    train_per_class=16,
    val_per_class=4,
    test_per_class=40,
    seed=0,
    dataset="synth",
    backbone="synth-bb",
    wnids=False,
    world=None,
    provenance=None,
    **world_kw,
):
    """Write a synthetic cache and return (path, world)."""
    world = world or World(C=C, d=d, seed=seed, **world_kw)
    C, d = world.C, world.d
    rng = np.random.default_rng(seed + 1)
    ytr = np.repeat(np.arange(C), train_per_class)
    yva = np.repeat(np.arange(C), val_per_class)
    yte = np.repeat(np.arange(C), test_per_class)
    splits = {
        "train": Split(world.images(ytr, 2, rng), ytr, np.arange(len(ytr)), ["center", "hflip"]),
        "val": Split(world.images(yva, 1, rng), yva, np.arange(len(yva)), ["center"]),
        "test": Split(world.images(yte, 1, rng), yte, np.arange(len(yte)), ["center"]),
    }
    fewshot = {}
    for s in seeds:
        r = np.random.default_rng(1000 + s)
        for k in shots:
            tr = np.concatenate([r.choice(np.flatnonzero(ytr == c), k, replace=False) for c in range(C)])
            va = np.concatenate(
                [r.choice(np.flatnonzero(yva == c), min(k, 4, val_per_class), replace=False) for c in range(C)]
            )
            fewshot[(k, s)] = (np.sort(tr), np.sort(va))
    prov = {"model": "synthetic", "pretrained": None, "embed_dim": d, "note": "tests/support/synth.py"}
    prov.update(provenance or {})
    write_cache(
        path,
        dataset=dataset,
        backbone=backbone,
        provenance=prov,
        classnames=[f"class {i}" for i in range(C)],
        text={"synthetic": (world.text, ["a photo of a {}."])},
        default_templates="synthetic",
        splits=splits,
        fewshot=fewshot,
        wnids=[f"n{i:08d}" for i in range(C)] if wnids else None,
    )
    return path, world


def make_shift_cache(
    path,
    world,
    classes,
    test_per_class=30,
    seed=7,
    backbone="synth-bb",
    dataset="synth-shift",
    wnids=None,
    provenance=None,
):
    """A shift cache of `world` holding test only, for the run's classes `classes` (imagenet_index)."""
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    local = np.repeat(np.arange(len(classes)), test_per_class)
    feats = world.images(classes[local], 1, rng)
    prov = {"model": "synthetic", "pretrained": None, "embed_dim": world.d, "note": "tests/support/synth.py"}
    prov.update(provenance or {})
    write_cache(
        path,
        dataset=dataset,
        backbone=backbone,
        provenance=prov,
        classnames=[f"class {i}" for i in classes],
        text={"synthetic": (world.text[classes], ["a photo of a {}."])},
        default_templates="synthetic",
        splits={"test": Split(feats, local, np.arange(len(local)), ["center"])},
        wnids=wnids if wnids is not None else [f"n{i:08d}" for i in classes],
        imagenet_index=classes,
    )
    return path
