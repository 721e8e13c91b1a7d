"""Caches for the method tests: synthetic ones with per-template text, and the real-feature conversion.

Synthetic: tests/support/synth.World (a modality gap CMM-like methods can learn), plus M raw template
embeddings per class whose normalized mean is the cached T0.

Real: the Tip-Adapter-format CLIP ViT-B/32 features (the folder named by CMM_REAL_FEATURES; no text
features there). As tests/test_real_features.py does, the CoOp
val split is divided per class: 4 images per class are the val pool (the few-shot val subsets come
from it), the rest ("val-rest") only build the simulated text: template j of class k is
``s·(m_k + |m_k|·g + 0.25·ξ_k/√d + 0.5·ζ_kj/√d)`` — the class mean of val-rest, a common modality-gap
offset g, a per-class prompt error ξ_k and a per-template error ζ_kj, at a CLIP-like raw scale s.
Few-shot train subsets draw K of the 16 cached images per class with each seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cmm_cache.cache.reader import Split
from cmm_cache.cache.writer import write_cache
from cmm_cache.extract.encode import augmented_names
from support.synth import World

# Real CLIP features are data the project may not ship (no licence): tests that need them read the folder
# named by CMM_REAL_FEATURES and are skipped, with that reason in the summary, where it is not set.
REAL_ROOT = Path(os.environ["CMM_REAL_FEATURES"]) if os.environ.get("CMM_REAL_FEATURES") else None
REAL_SKIP_REASON = (
    "needs real CLIP features: set CMM_REAL_FEATURES to a folder of Tip-Adapter-format feature caches "
    "(oxford_pets/ with keys_16shots.pt, values_16shots.pt, val_f.pt, val_l.pt, test_f.pt, test_l.pt)"
)


def real_folder(name: str) -> Path | None:
    """The real-feature folder `name` under CMM_REAL_FEATURES, or None when it is not there."""
    return REAL_ROOT / name if REAL_ROOT is not None and (REAL_ROOT / name).is_dir() else None


def load_tip_folder(folder: Path, seed: int = 0):
    """A Tip-Adapter feature folder as arrays, with the CoOp val split divided per class (fixed seed):
    4 images per class form the val pool (few-shot val subsets come from it), the rest ("val-rest")
    may only build simulated text. Returns keys, ytr, vf, vl, tf, tl, pool rows, rest rows, rng."""
    import torch

    load = lambda name: torch.load(folder / name, map_location="cpu", weights_only=False)  # noqa: E731
    keys = load("keys_16shots.pt").float().t().numpy()  # [C·16, d]
    ytr = load("values_16shots.pt").float().argmax(1).numpy()
    vf, vl = load("val_f.pt").float().numpy(), load("val_l.pt").numpy()
    tf, tl = load("test_f.pt").float().numpy(), load("test_l.pt").numpy()
    rng = np.random.default_rng(seed)
    pool, rest = [], []
    for c in range(int(ytr.max()) + 1):
        rows = rng.permutation(np.flatnonzero(vl == c))
        pool.append(rows[:4])
        rest.append(rows[4:])
    return keys, ytr, vf, vl, tf, tl, np.sort(np.concatenate(pool)), np.concatenate(rest), rng


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _fewshot(ytr, yva, C, shots, seeds, base=1000):
    out = {}
    for s in seeds:
        r = np.random.default_rng(base + s)
        for k in shots:
            tr = np.concatenate([r.choice(np.flatnonzero(ytr == c), k, replace=False) for c in range(C)])
            va = np.concatenate([r.choice(np.flatnonzero(yva == c), min(k, 4), replace=False) for c in range(C)])
            out[(k, s)] = (np.sort(tr), np.sort(va))
    return out


def make_text_cache(
    path,
    C=6,
    d=16,
    M=3,
    shots=(1, 4),
    seeds=(1, 2),
    test_per_class=20,
    scramble_test=False,
    seed=0,
    views=2,
    blocks=False,
    dataset="synth",
    backbone="synth-bb",
):
    """A synthetic cache with per-template text; scramble_test permutes the test labels only; `views` train
    views (centre, mirror, then rrc-1.. named as `extract --train-views` names them); `blocks`: block inputs
    too (:func:`add_synthetic_blocks`)."""
    w = World(C=C, d=d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    per = (w.text[:, None, :] + 0.5 * rng.standard_normal((C, M, d)) / np.sqrt(d)) * 8.0
    T0 = _unit(per.mean(1))
    ytr, yva, yte = (np.repeat(np.arange(C), n) for n in (16, 4, test_per_class))
    test_x = w.images(yte, 1, rng)
    if scramble_test:
        yte = np.random.default_rng(99).permutation(yte)
    write_cache(
        path,
        dataset=dataset,
        backbone=backbone,
        provenance={"model": "synthetic", "embed_dim": d},
        classnames=[f"class {i}" for i in range(C)],
        text={"synthetic": (T0, [f"template {j} {{}}" for j in range(M)], per.astype(np.float32))},
        default_templates="synthetic",
        splits={
            "train": Split(w.images(ytr, views, rng), ytr, np.arange(len(ytr)), augmented_names(views)),
            "val": Split(w.images(yva, 1, rng), yva, np.arange(len(yva)), ["center"]),
            "test": Split(test_x, yte, np.arange(len(yte)), ["center"]),
        },
        fewshot=_fewshot(ytr, yva, C, shots, seeds),
    )
    if blocks:
        add_synthetic_blocks(path, seed)
    return path


BLOCK_CONFIG = {"arch": "vit", "blocks": 1, "width": 8, "heads": 2, "act": "quick_gelu", "ln_eps": 1e-5,
                "pool_type": "tok", "final_ln_after_pool": False, "input_shape": [5, 8]}  # fmt: skip


def add_synthetic_blocks(path, seed=0):
    """Block inputs for a synthetic cache: a ViT block of width 8 over 5 tokens, random weights (its `proj`
    maps to the cache's d). Each row's tokens are a fixed linear image of its feature (centre/mirror views for
    train) plus token noise, so the class signal is in them; the features themselves are left as they are."""
    from cmm_cache.cache.reader import open_cache
    from cmm_cache.cache.writer import write_block_nodes

    c = open_cache(path)
    d, (L, W) = c.embed_dim, BLOCK_CONFIG["input_shape"]
    g = np.random.default_rng(seed + 7)
    A = g.standard_normal((W, d)) / np.sqrt(d)
    weights = {
        "blocks.0.ln_1.weight": np.ones(W), "blocks.0.ln_1.bias": np.zeros(W),
        "blocks.0.attn.in_proj_weight": g.standard_normal((3 * W, W)) / np.sqrt(W),
        "blocks.0.attn.in_proj_bias": np.zeros(3 * W),
        "blocks.0.attn.out_proj.weight": g.standard_normal((W, W)) / np.sqrt(W),
        "blocks.0.attn.out_proj.bias": np.zeros(W),
        "blocks.0.ln_2.weight": np.ones(W), "blocks.0.ln_2.bias": np.zeros(W),
        "blocks.0.mlp.c_fc.weight": g.standard_normal((4 * W, W)) / np.sqrt(W),
        "blocks.0.mlp.c_fc.bias": np.zeros(4 * W),
        "blocks.0.mlp.c_proj.weight": g.standard_normal((W, 4 * W)) / np.sqrt(4 * W),
        "blocks.0.mlp.c_proj.bias": np.zeros(W),
        "ln_post.weight": np.ones(W), "ln_post.bias": np.zeros(W),
        "proj": g.standard_normal((W, d)) / np.sqrt(W),
    }  # fmt: skip
    inputs = {}
    for split in ("train", "val", "test"):
        s = c.split(split)
        f = s.features[:, : min(2, len(s.views))].astype(np.float32)
        f = f / np.linalg.norm(f, axis=-1, keepdims=True)
        tok = np.einsum("nvd,wd->nvw", f, A)[:, :, None, :] + 0.2 * g.standard_normal((*f.shape[:2], L, W))
        inputs[split] = (tok.astype(np.float16), s.views[: f.shape[1]])
    cut = {"arch": "vit", "blocks": 1, "input_shape": [L, W], "dtype": "float16", "config": dict(BLOCK_CONFIG),
           "prefix_sha256": "synthetic-prefix", "suffix_sha256": "synthetic-suffix"}  # fmt: skip
    write_block_nodes(path, inputs, cut, {k: np.asarray(v, np.float32) for k, v in weights.items()})
    return path


def convert_real(folder: Path, out: Path, shots=(1, 16), seeds=(1, 2, 3), M=7, seed=0) -> Path:
    """Tip-Adapter feature folder -> cmm-cache/1 file with simulated per-template text (see module doc)."""
    keys, ytr, vf, vl, tf, tl, pool, rest, rng = load_tip_folder(folder, seed)
    C, d = int(ytr.max()) + 1, keys.shape[1]
    m = np.stack([_unit(vf[rest][vl[rest] == c]).mean(0) for c in range(C)])
    g = _unit(rng.standard_normal(d))
    xi = 0.25 * rng.standard_normal((C, 1, d)) / np.sqrt(d)
    zeta = 0.5 * rng.standard_normal((C, M, d)) / np.sqrt(d)
    per = 8.0 * (m[:, None] + np.linalg.norm(m, axis=1)[:, None, None] * g + xi + zeta)
    write_cache(
        out,
        dataset=folder.name,
        backbone="vit-b-32",
        provenance={"model": "ViT-B-32", "source": "Tip-Adapter cache"},
        classnames=[f"class {c}" for c in range(C)],
        text={"simulated": (_unit(per.mean(1)), [f"simulated {j}" for j in range(M)], per.astype(np.float32))},
        default_templates="simulated",
        splits={
            "train": Split(keys[:, None], ytr, np.arange(len(ytr)), ["center"]),
            "val": Split(vf[pool][:, None], vl[pool], pool, ["center"]),
            "test": Split(tf[:, None], tl, np.arange(len(tl)), ["center"]),
        },
        fewshot=_fewshot(ytr, vl[pool], C, shots, seeds),
    )
    return out
