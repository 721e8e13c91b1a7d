"""Modality-gap measures: plain functions on image features, labels and class text prototypes.

Everything here takes tensors (or numpy arrays) and returns plain Python numbers and dicts, so it
works on any CLIP-like features — a cmm-cache cache or run, or features from elsewhere — and its
results go to JSON unchanged. Nothing here reads files or knows about runs.

Conventions shared by every measure
-----------------------------------
* ``v`` [n, d]: image features, one row per image; ``y`` [n]: integer class ids in [0, C);
  ``t`` [C, d]: one text prototype per class (row c belongs to class c).
* **Every measure L2-normalizes its inputs itself** (v̂ = v/‖v‖, t̂ = t/‖t‖): the literature's
  measures are defined on the unit sphere, and normalizing twice changes nothing, so callers may
  pass raw or normalized features alike. A zero or non-finite row is an error, never a silent NaN.
* "Before" and "after" for a CMM run are the same functions on different inputs:
  before = (v̂, T0), after = (:func:`cmm_map` (v, W) = normalize(v̂W + v̂), T) — see :func:`before_after`.
* Per-class measures average over the classes that *have* images in ``y`` (a subset of a split may
  lack some); the count used is reported. Measures that the official code defines over all text
  prototypes (RMG's d_T, the mismatched distribution) use all C rows.
* Sums over images are accumulated in float64, blockwise (``block`` rows at a time), so ImageNet's
  50,000 × 1,024 test features never need an n × n (or a float64 n × d) matrix. Normalized features
  are kept in float32 (float64 if given float64).
* Sampling (only for percentiles of very large sets) is seeded with numpy's PCG64 through
  ``np.random.SeedSequence(seed)``: the same inputs and seed give the same numbers on every machine.

Sources
-------
* L2M — Liang et al., "Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive
  Representation Learning", NeurIPS 2022; Weixin-Liang/Modality-Gap @ 8e20cb24efa4c5f89aad694f2f65eb43ffc46d10,
  ``Table_1_Implications_CLIP_Zero_Shot/training/train_clip.py`` (``move_features``: ``gap_distance``
  = ‖mean of normalized text − mean of normalized images‖; the means themselves are not re-normalized).
  Also ``compute_l2m`` in lmb-freiburg/two-effects-one-trigger (below), the same formula.
* RMG — Schrodi et al., "Two Effects, One Trigger: On the Modality Gap, Object Bias, and Information
  Imbalance in Contrastive Vision-Language Models", ICLR 2025; lmb-freiburg/two-effects-one-trigger
  @ ed38130655aa2c69ef32ff8fb9991e78dd9963a5 (code uploaded in 3fa49b8b), ``analysis/gap_precompute.py``,
  ``compute_rmg`` with ``dataset == "imagenet"`` (classification mode). See :func:`rmg_parts`.
* Fig. 3, 7, 9 — Yang et al., "Cross-Modal Mapping: Mitigating the Modality Gap for Few-Shot Image
  Classification" (arXiv 2412.20110). The paper draws these but does not define them by formula; the
  formulas below are ours and are stated in each docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CmmError

DEFAULT_MAX_PAIRS = 200_000  # exact percentiles up to this many values, else a seeded sample of this size
DEFAULT_BLOCK = 4096
PERCENTILES = (5, 50, 95)
RMG_FLOOR = 1e-3  # the official code's stand-in for a non-positive m
_EXACT_ENTRIES = 4_000_000  # entries of one similarity block on the exact (enumerate-all) paths

DISTRIBUTIONS = ("matched", "mismatched", "image_image")
DISTRIBUTION_LABELS = {
    "matched": "matched image–text  cos(v_i, t_{y_i})",
    "mismatched": "mismatched image–text  cos(v_i, t_c), c ≠ y_i",
    "image_image": "image–image, different classes  cos(v_i, v_j), y_i ≠ y_j",
}

_HINT_FEATURES = "Pass image features as [n, d], class text prototypes as [C, d] and labels as [n] integers in [0, C)."

# ----------------------------------------------------------------------------
# Input checking (every public function goes through these: clear errors, never silent NaNs)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise CmmError(f"{name} is not an array of numbers ({e}).", _HINT_FEATURES) from None


def _features(x, name: str, *, min_rows: int = 1, check_finite: bool = True) -> torch.Tensor:
    """A checked 2-D floating tensor (half precision widened to float32).

    ``check_finite=False`` when the next step is :func:`_normalize`, which finds non-finite rows from
    their float64 norms at no extra pass over a 50,000 × 1,024 array.
    """
    x = _as_tensor(x, name)
    if x.dim() != 2:
        raise CmmError(f"{name} must be a 2-D array [rows, dim]; got shape {tuple(x.shape)}.", _HINT_FEATURES)
    if not (x.is_floating_point()):
        raise CmmError(f"{name} must hold floating-point features; got dtype {x.dtype}.", _HINT_FEATURES)
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise CmmError(f"{name} needs at least {min_rows} row(s) of width ≥ 1; got shape {tuple(x.shape)}.")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x).all(dim=1)).nonzero()[0, 0])
        raise CmmError(f"{name} holds non-finite values (NaN or inf), first in row {bad}.", "Check the features.")
    return x


def _labels(y, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    y = _as_tensor(y, name)
    if y.dim() != 1 or y.shape[0] != n:
        raise CmmError(f"{name} must be a 1-D array of {n} class ids; got shape {tuple(y.shape)}.", _HINT_FEATURES)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise CmmError(f"{name} must be integers; got dtype {y.dtype}.", _HINT_FEATURES)
    y = y.long()
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise CmmError(
            f"{name} range from {int(y.min())} to {int(y.max())}, outside [0, {num_classes}) "
            f"({num_classes} class prototypes given).",
            "Labels index the rows of the text prototypes: pass the prototypes of every class.",
        )
    return y


def _check_set(v, y, t, *, vname: str = "image features", tname: str = "text prototypes"):
    """(v, y, t) checked together: widths agree, ≥ 2 classes, ≥ 2 of them present among the images."""
    v = _features(v, vname, min_rows=2, check_finite=False)  # _prepare's _normalize checks
    t = _features(t, tname, min_rows=2)
    if t.shape[0] < 2:
        raise CmmError(f"{tname}: need at least 2 classes; got {t.shape[0]}.")
    if v.shape[1] != t.shape[1]:
        raise CmmError(
            f"{vname} have width {v.shape[1]} but {tname} have width {t.shape[1]}.",
            "Both must live in the same embedding space (same backbone).",
        )
    y = _labels(y, v.shape[0], t.shape[0])
    if int(torch.unique(y).numel()) < 2:
        raise CmmError(
            f"The images cover fewer than 2 classes ({int(torch.unique(y).numel())}); the gap measures compare "
            "classes and need at least 2.",
            "Use a split (or subset) with images of at least two classes.",
        )
    return v, y.to(v.device), t.to(v.device)


def _block(block: int) -> int:
    if not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 1:
        raise CmmError(f"block must be a positive integer; got {block!r}.")
    return int(block)


# ----------------------------------------------------------------------------
# Normalization and the CMM map


def normalize(x, *, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Rows of ``x`` [n, d] divided by their L2 norm: x̂_i = x_i / ‖x_i‖₂.

    Half precision comes back as float32, float64 stays float64. A zero row has no direction and is
    an error (not the silent zero vector ``clamp_min(eps)`` would give: a measure averaged over it
    would be quietly wrong).
    """
    return _normalize(_features(x, "features", check_finite=False), _block(block))


def _normalize(x: torch.Tensor, block: int, name: str = "features") -> torch.Tensor:
    """normalize() on an already checked tensor (norms in float64, the division in x's dtype)."""
    out = torch.empty_like(x)
    for a in range(0, x.shape[0], block):
        xb = x[a : a + block]
        nrm = torch.linalg.vector_norm(xb, dim=1, keepdim=True, dtype=torch.float64)
        if not bool(torch.isfinite(nrm).all()):  # a NaN or inf anywhere in a row makes its norm non-finite
            bad = a + int((~torch.isfinite(nrm[:, 0])).nonzero()[0, 0])
            raise CmmError(f"{name}: row {bad} holds non-finite values (NaN or inf).", "Check the features.")
        if bool((nrm == 0).any()):
            bad = a + int((nrm[:, 0] == 0).nonzero()[0, 0])
            raise CmmError(f"{name}: row {bad} is all zeros, it has no direction.", "Check the features.")
        out[a : a + block] = xb / nrm.to(x.dtype)
    return out


@dataclass
class _Set:
    """One checked, normalized (images, labels, prototypes) set, with its class sums computed once."""

    vh: torch.Tensor  # [n, d] normalized images
    y: torch.Tensor  # [n] int64, on vh's device
    th: torch.Tensor  # [C, d] normalized prototypes, vh's dtype and device
    block: int
    _sums: tuple | None = None

    @property
    def n(self) -> int:
        return int(self.vh.shape[0])

    @property
    def C(self) -> int:
        return int(self.th.shape[0])

    _matched: np.ndarray | None = None

    def class_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_{y_i=c} v̂_i in float64 [C, d], n_c [C])."""
        if self._sums is None:
            self._sums = _class_sums(self.vh, self.y, self.C, self.block)
        return self._sums

    def matched(self) -> np.ndarray:
        """cos(v_i, t_{y_i}) for every image, float64 [n] (dots in the features' dtype)."""
        if self._matched is None:
            out = np.empty(self.n, dtype=np.float64)
            for a in range(0, self.n, self.block):
                yb = self.y[a : a + self.block]
                dots = torch.linalg.vecdot(self.vh[a : a + self.block], self.th.index_select(0, yb))
                out[a : a + self.block] = dots.double().cpu().numpy()
            self._matched = out
        return self._matched


def _prepare(v, y, t, block: int) -> _Set:
    block = _block(block)
    v, y, t = _check_set(v, y, t)
    vh = _normalize(v, block, "image features")
    th = _normalize(t, block, "text prototypes").to(vh.dtype)
    return _Set(vh, y, th, block)


def cmm_map(v, W=None, *, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """CMM's mapped image features, normalized: normalize(v̂ W + v̂), with v̂ = normalize(v).

    ``W`` [d, d] is the run's residual map (paper §3, eq. v' = v̂W + v̂, the ``W`` in a run's
    weights); ``W = None`` is the no-map ablation, where the "after" image features are v̂ itself.
    These are the image features every "after" measure takes (against the run's prototypes T).
    """
    block = _block(block)
    v = _normalize(_features(v, "image features", check_finite=False), block, "image features")
    if W is None:
        return v
    W = _features(W, "map W").to(v.device)
    if W.shape != (v.shape[1], v.shape[1]):
        raise CmmError(f"map W must be [d, d] = [{v.shape[1]}, {v.shape[1]}]; got {tuple(W.shape)}.")
    W = W.to(v.dtype)
    out = torch.empty_like(v)
    for a in range(0, v.shape[0], block):
        vb = v[a : a + block]
        out[a : a + block] = vb @ W + vb
    return _normalize(out, block, "mapped image features (v̂W + v̂)")


# ----------------------------------------------------------------------------
# Class means


def class_means(v, y, num_classes: int, *, block: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(means [C, d] float64, counts [C] int64): m_c = (1/n_c) Σ_{i: y_i = c} v̂_i, on normalized v.

    Rows of classes without images are zero with count 0 (callers select ``counts > 0``). The means are
    *not* re-normalized here; :func:`prototype_gap` normalizes them, :func:`l2m` does not (see there).
    """
    block = _block(block)
    v = _features(v, "image features", check_finite=False)
    y = _labels(y, v.shape[0], int(num_classes)).to(v.device)
    sums, counts = _class_sums(_normalize(v, block, "image features"), y, int(num_classes), block)
    means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
    return means, counts


def _class_sums(vh: torch.Tensor, y: torch.Tensor, C: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(C, vh.shape[1], dtype=torch.float64, device=vh.device)
    for a in range(0, vh.shape[0], block):
        sums.index_add_(0, y[a : a + block], vh[a : a + block].double())
    return sums, torch.bincount(y, minlength=C)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------
# L2M and the per-class prototype gap


def l2m(v, y, t, *, normalize_class_means: bool = False, block: int = DEFAULT_BLOCK) -> float:
    """L2M, the distance between the modality centres, with a class-balanced image centre.

        L2M = ‖ (1/|K|) Σ_{c∈K} m_c − (1/|K|) Σ_{c∈K} t̂_c ‖₂,   m_c = (1/n_c) Σ_{y_i=c} v̂_i,

    K the classes with images in ``y``. Liang et al. (2022) define the gap as ‖mean_i v̂_i − mean_c t̂_c‖
    (Weixin-Liang/Modality-Gap @ 8e20cb2, ``train_clip.py``, ``move_features``: the means of normalized
    features, not themselves re-normalized). Here the image centre is **class-balanced** — the mean of
    the per-class means — so a split with unequal class sizes weighs every class once, as the text
    centre does; on a balanced split (ImageNet's test set: 50 per class) it equals Liang's number and
    Schrodi et al.'s ``compute_l2m`` exactly. Pairing each class mean with its own prototype (both
    over K) keeps a subset that lacks classes from comparing different class sets.

    ``normalize_class_means=True`` re-normalizes each m_c first (a centre of class *directions*, what
    "μ_c the normalized class mean" would mean if read into L2M); that is a different number, not
    comparable with published L2M values, so it is not the default (``gap --l2m-normalized-means``).
    Range [0, 2]; 0 when the class-balanced image centre sits on the text centre.
    """
    return _l2m(_prepare(v, y, t, block), normalize_class_means)


def _l2m(s: _Set, normalize_class_means: bool = False) -> float:
    sums, counts = s.class_sums()
    present = counts > 0
    means = sums[present] / counts[present].unsqueeze(1).double()
    if normalize_class_means:
        means = _unit(means)
    th = s.th.double()[present]
    return float((means.mean(0) - th.mean(0)).norm())


def prototype_gap(v, y, t, *, block: int = DEFAULT_BLOCK) -> dict:
    """The per-class prototype gap: how far each class's image centre is from its own prototype.

        μ_c = normalize((1/n_c) Σ_{y_i=c} v̂_i)          (the normalized mean image of class c)
        l2  = (1/|K|) Σ_{c∈K} ‖μ_c − t̂_c‖₂              (range [0, 2]; 0 = on top of each other)
        cos = (1/|K|) Σ_{c∈K} cos(μ_c, t_c) = mean μ_c·t̂_c   (range [−1, 1]; 1 = same direction)

    K = the classes with images. On the unit sphere ‖μ_c − t̂_c‖² = 2 − 2 cos, so the two say the
    same thing per class; their means differ (Jensen) and both are reported. L2M (:func:`l2m`)
    compares the centres of the whole modalities; this compares class by class, which is what a
    prototype classifier needs. Returns {"l2", "cos", "classes"}.
    """
    return _prototype_gap(_prepare(v, y, t, block))


def _prototype_gap(s: _Set) -> dict:
    sums, counts = s.class_sums()
    present = counts > 0
    mu = _unit(sums[present])  # normalizing the sum = normalizing the mean
    th = s.th.double()[present]
    return {
        "l2": float((mu - th).norm(dim=1).mean()),
        "cos": float((mu * th).sum(1).mean()),
        "classes": int(present.sum()),
    }


# ----------------------------------------------------------------------------
# RMG (Schrodi et al., official code)


def _offdiag_mean_cos(xh: torch.Tensor, total: torch.Tensor, block: int) -> float:
    """mean over ordered pairs i ≠ j of x̂_i·x̂_j, exactly, without the n × n matrix.

    Σ_{i≠j} x̂_i·x̂_j = ‖Σ_i x̂_i‖² − Σ_i ‖x̂_i‖²  (the official code zeroes the diagonal of the full
    Gram matrix and divides by n² − n; this is the same number in O(n·d)). ``total`` = Σ_i x̂_i (float64).
    """
    diag = 0.0
    for a in range(0, xh.shape[0], block):
        diag += float(torch.linalg.vector_norm(xh[a : a + block], dim=1, dtype=torch.float64).square().sum())
    n = xh.shape[0]
    return (float(total @ total) - diag) / (n * n - n)


def rmg_parts(v, y, t, *, block: int = DEFAULT_BLOCK) -> dict:
    """RMG, the relative modality gap, with its parts — as the official code computes it.

    Source: lmb-freiburg/two-effects-one-trigger @ ed38130655aa2c69ef32ff8fb9991e78dd9963a5,
    ``analysis/gap_precompute.py``, ``compute_rmg(..., dataset="imagenet")`` (classification: one
    prompt embedding per class, each image matched with its class's text):

        matched = (1/n) Σ_i cos(v_i, t_{y_i})
        m       = 1 − (matched + 1)/2,   replaced by 1e-3 when m ≤ 0            (``torch.where(m > 0, m, 1e-3)``)
        d_I     = 1 − (s_I + 1)/2,   s_I = (1/(n² − n)) Σ_{i≠j} cos(v_i, v_j)    (all ordered pairs, diagonal out)
        d_T     = 1 − (s_T + 1)/2,   s_T = (1/(C² − C)) Σ_{c≠c'} cos(t_c, t_c')
        RMG     = m / (m + (d_I + d_T)/2)

    Read from their code, where it differs from a loose reading of the paper:

    * The "clamp" is not max(m, 1e-3): only a non-positive m (matched cos = 1, i.e. images exactly on
      their prototypes) is replaced by 1e-3; 0 < m < 1e-3 is kept. So RMG jumps near m = 0 — a
      degenerate case that real features never reach (CLIP: m ≈ 0.35–0.4). We follow the code.
    * s_I averages over **all** pairs of different images, same class included: ``labels_to_idx_map``
      (different-class pairs) is computed there but never used. The diagonal is excluded by zeroing
      it (``fill_diagonal_(0)``) and dividing by n² − n. We compute the same sum exactly in O(n·d).
    * No class balancing anywhere: every image counts once in ``matched`` and s_I; d_T uses all C
      prototypes. (Their text features are one prompt per class; ours are whatever ``t`` is —
      T0, template-averaged, before; the run's T, normalized, after. Same formula, different input.)
    * They compute in float32 (``.item()`` at the end); we accumulate in float64.

    Range (0, 1); smaller = modalities closer relative to the spread within each modality.
    Returns {"rmg", "m", "m_raw", "m_replaced", "matched_cos_mean", "d_image", "d_text",
    "image_cos_mean", "text_cos_mean"}.
    """
    return _rmg_parts(_prepare(v, y, t, block))


def _rmg_parts(s: _Set) -> dict:
    matched = float(s.matched().mean())
    m_raw = 1.0 - (matched + 1.0) / 2.0
    m = m_raw if m_raw > 0 else RMG_FLOOR
    s_img = _offdiag_mean_cos(s.vh, s.class_sums()[0].sum(0), s.block)
    s_txt = _offdiag_mean_cos(s.th, s.th.double().sum(0), s.block)
    d_img = 1.0 - (s_img + 1.0) / 2.0
    d_txt = 1.0 - (s_txt + 1.0) / 2.0
    return {
        "rmg": m / (m + (d_img + d_txt) / 2.0),
        "m": m,
        "m_raw": m_raw,
        "m_replaced": not (m_raw > 0),
        "matched_cos_mean": matched,
        "d_image": d_img,
        "d_text": d_txt,
        "image_cos_mean": s_img,
        "text_cos_mean": s_txt,
    }


def rmg(v, y, t, *, block: int = DEFAULT_BLOCK) -> float:
    """RMG = m / (m + (d_I + d_T)/2), Schrodi et al.'s official formula; see :func:`rmg_parts`."""
    return rmg_parts(v, y, t, block=block)["rmg"]


# ----------------------------------------------------------------------------
# Fig. 7: the three similarity distributions


def _summary(values: np.ndarray, mean: float, count: int, exact: bool) -> dict:
    p = np.percentile(values, PERCENTILES) if values.size else [math.nan] * len(PERCENTILES)
    out = {"mean": float(mean)}
    out.update({f"p{q}": float(x) for q, x in zip(PERCENTILES, p)})
    out.update({"count": int(count), "percentiles_from": "all" if exact else "sample", "sample": int(values.size)})
    return out


def _rngs(seed: int, k: int) -> list[np.random.Generator]:
    """k independent generators from one seed, so one distribution's sampling never shifts another's."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(k)]


def _pair_dots(a: torch.Tensor, ia: np.ndarray, b: torch.Tensor, ib: np.ndarray, block: int) -> np.ndarray:
    """a[ia[k]]·b[ib[k]] for every k, gathered `block` pairs at a time, in the order of ``ia``.

    Callers pass ``ia`` sorted (the sample's order does not matter for percentiles): rows of ``a`` are
    then read nearly in sequence, which roughly halves the time of the random gathers.
    """
    out = np.empty(len(ia), dtype=np.float64)
    dev = a.device
    for s in range(0, len(ia), block):
        i = torch.as_tensor(ia[s : s + block], device=dev)
        j = torch.as_tensor(ib[s : s + block], device=dev)
        out[s : s + block] = torch.linalg.vecdot(a.index_select(0, i), b.index_select(0, j)).double().cpu().numpy()
    return out


def similarity_distributions(
    v,
    y,
    t,
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
    block: int = DEFAULT_BLOCK,
    return_values: bool = False,
):
    """The three cosine-similarity distributions of CMM's Fig. 7, as mean and 5/50/95th percentiles.

    On normalized features (v̂, t̂), over the given images:

    * ``matched``:     cos(v_i, t_{y_i})                    for every image i            (n values)
    * ``mismatched``:  cos(v_i, t_c)   for every image i and every class c ≠ y_i         (n·(C−1) values)
    * ``image_image``: cos(v_i, v_j)   for every unordered pair {i, j} with y_i ≠ y_j    ((n² − Σ_c n_c²)/2 values)

    **Means are always exact**, from sums, whatever the size:
    Σ_{i,c≠y_i} v̂_i·t̂_c = (Σ_i v̂_i)·(Σ_c t̂_c) − Σ_i v̂_i·t̂_{y_i}, and
    Σ_{y_i≠y_j} v̂_i·v̂_j = ‖Σ_i v̂_i‖² − Σ_c ‖Σ_{y_i=c} v̂_i‖² (ordered pairs; the mean is the same
    over unordered ones). **Percentiles** (numpy's default linear interpolation) come from all values
    when a distribution has at most ``max_pairs`` of them, computed in blocks; otherwise from a seeded
    uniform sample of ``max_pairs`` of them (with replacement) — mismatched: image uniform, then a
    class uniform among its C−1 others; image–image: an ordered pair uniform over the different-class
    pairs (first image weighted by n − n_{y_i}, second uniform among the other classes' images). On
    ImageNet's test set (50,000 × 999 mismatched, ~1.25·10⁹ image pairs) the default is 2·10⁵ samples
    each: a percentile's sampling error is √(p(1−p)/k)/density ≈ 3·10⁻⁴ for a spread like CLIP's
    (sd ≈ 0.07), far below what a histogram shows, and gathering 10⁶ random pairs costs ~5 s on two
    CPU cores. The matched set (n values) is always used whole.

    Each entry: {"mean", "p5", "p50", "p95", "count" (values in the distribution), "percentiles_from"
    ("all" | "sample"), "sample" (values used for the percentiles)}; plus "seed" and "max_pairs".
    ``return_values=True`` returns (summary, {name: float64 numpy array of the values used}) — for the
    histograms; keep them out of JSON.
    """
    return _similarity_distributions(_prepare(v, y, t, block), max_pairs, seed, return_values)


def _similarity_distributions(s: _Set, max_pairs: int, seed: int, return_values: bool = False):
    if not isinstance(max_pairs, (int, np.integer)) or isinstance(max_pairs, bool) or max_pairs < 1:
        raise CmmError(f"max_pairs must be a positive integer; got {max_pairs!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise CmmError(f"seed must be a non-negative integer; got {seed!r}.")
    max_pairs = int(max_pairs)
    vh, y, th, block = s.vh, s.y, s.th, s.block
    n, C = s.n, s.C
    y_np = y.cpu().numpy()
    counts = np.bincount(y_np, minlength=C).astype(np.int64)
    rng_mis, rng_img = _rngs(seed, 2)

    matched = s.matched()  # n values, always whole
    matched_mean, matched_sum = float(matched.mean()), float(matched.sum())

    # class sums (float64) give the exact means of the other two
    sums, _ = s.class_sums()
    total = sums.sum(0)
    t_total = th.double().sum(0)

    mis_count = n * (C - 1)
    mis_mean = (float(total @ t_total) - matched_sum) / mis_count
    if mis_count <= max_pairs:
        parts = []
        for a in range(0, n, block):
            sim = (vh[a : a + block] @ th.t()).double()
            keep = torch.ones_like(sim, dtype=torch.bool)
            keep[torch.arange(sim.shape[0], device=sim.device), y[a : a + block]] = False
            parts.append(sim[keep].cpu().numpy())
        mis_vals, mis_exact = np.concatenate(parts), True
    else:
        i = np.sort(rng_mis.integers(0, n, size=max_pairs))
        off = rng_mis.integers(0, C - 1, size=max_pairs)
        c = off + (off >= y_np[i])
        mis_vals, mis_exact = _pair_dots(vh, i, th, c, block), False

    ordered = n * n - int((counts * counts).sum())
    img_count = ordered // 2
    img_mean = (float(total @ total) - float((sums * sums).sum())) / ordered
    if img_count <= max_pairs:
        parts = []
        rb = max(1, min(block, _EXACT_ENTRIES // n))  # rows per block: a [rb, n] matrix stays small
        for a in range(0, n, rb):
            sim = (vh[a : a + rb] @ vh.t()).double()
            rows = torch.arange(a, a + sim.shape[0], device=sim.device).unsqueeze(1)
            cols = torch.arange(n, device=sim.device).unsqueeze(0)
            keep = (cols > rows) & (y[a : a + rb].unsqueeze(1) != y.unsqueeze(0))
            parts.append(sim[keep].cpu().numpy())
        img_vals, img_exact = np.concatenate(parts), True
    else:
        others = n - counts[y_np]  # images of other classes, per first image
        i = np.sort(rng_img.choice(n, size=max_pairs, p=others / others.sum()))
        r = rng_img.integers(0, others[i])  # position among the other classes' images
        order = np.argsort(y_np, kind="stable")
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        ci = y_np[i]
        pos = r + np.where(r >= start[ci], counts[ci], 0)  # skip the block of the first image's own class
        img_vals, img_exact = _pair_dots(vh, i, vh, order[pos], block), False

    summary = {
        "matched": _summary(matched, matched_mean, n, True),
        "mismatched": _summary(mis_vals, mis_mean, mis_count, mis_exact),
        "image_image": _summary(img_vals, img_mean, img_count, img_exact),
        "seed": int(seed),
        "max_pairs": max_pairs,
    }
    if return_values:
        return summary, {"matched": matched, "mismatched": mis_vals, "image_image": img_vals}
    return summary


# ----------------------------------------------------------------------------
# All of them


def gap_measures(
    v,
    y,
    t,
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
    block: int = DEFAULT_BLOCK,
    l2m_normalized_means: bool = False,
) -> dict:
    """Every gap measure of one (image features, labels, text prototypes) set, JSON-ready.

    {"images", "classes", "classes_with_images", "dim",
     "l2m", "l2m_image_centre": "class-balanced", "prototype_gap": {"l2", "cos", "classes"},
     "rmg", "rmg_parts": {...}, "similarities": {...}} — see :func:`l2m`, :func:`prototype_gap`,
    :func:`rmg_parts`, :func:`similarity_distributions` for each formula. Normalizes once.
    ``l2m_normalized_means=True`` adds "l2m_normalized_means", :func:`l2m`'s other variant (each class
    mean re-normalized first); "l2m" stays the published definition.
    """
    s = _prepare(v, y, t, block)
    parts = _rmg_parts(s)
    extra = {"l2m_normalized_means": _l2m(s, True)} if l2m_normalized_means else {}
    return {
        "images": s.n,
        "classes": s.C,
        "classes_with_images": int((s.class_sums()[1] > 0).sum()),
        "dim": int(s.vh.shape[1]),
        "l2m": _l2m(s),
        "l2m_image_centre": "class-balanced (mean of per-class means of normalized image features)",
        **extra,
        "prototype_gap": _prototype_gap(s),
        "rmg": parts["rmg"],
        "rmg_parts": {k: val for k, val in parts.items() if k != "rmg"},
        "similarities": _similarity_distributions(s, max_pairs, seed),
    }


def before_after(v, y, T0, *, T=None, W=None, **kwargs) -> dict:
    """{"before": gap_measures(v̂, y, T0), "after": gap_measures(normalize(v̂W + v̂), y, T) or None}.

    "After" is defined when the run has its own prototypes ``T`` (the CMM family); ``W = None`` with a
    ``T`` is the no-map ablation (after = v̂ against T). Without ``T`` (zero-shot, or a method with no
    prototypes) "after" is None: say "not defined" rather than inventing a number. ``kwargs`` go to
    :func:`gap_measures` (``max_pairs``, ``seed``, ``block``); both sides use the same seed.
    """
    before = gap_measures(v, y, T0, **kwargs)
    if T is None:
        if W is not None:
            raise CmmError("A map W was given without prototypes T: the 'after' measures need both (or T alone).")
        return {"before": before, "after": None}
    T = _features(T, "prototypes T")
    T0c = _features(T0, "text prototypes T0")
    if T.shape != T0c.shape:
        raise CmmError(f"prototypes T have shape {tuple(T.shape)} but T0 has {tuple(T0c.shape)}.")
    after = gap_measures(cmm_map(v, W, block=kwargs.get("block", DEFAULT_BLOCK)), y, T, **kwargs)
    return {"before": before, "after": after}


# ----------------------------------------------------------------------------
# Fig. 3: intra-, inter- and cross-modal classifiers on the same split


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((pred == y).double().mean())


def _argmax_scores(x: torch.Tensor, protos: torch.Tensor, block: int, mask: torch.Tensor | None = None):
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for a in range(0, x.shape[0], block):
        s = x[a : a + block] @ protos.t()
        if mask is not None:
            s = s.masked_fill(~mask.unsqueeze(0), -math.inf)
        out[a : a + block] = s.argmax(1)
    return out


def classifier_types(x_train, y_train, x_eval, y_eval, T0, cmm_logits=None, *, block: int = DEFAULT_BLOCK) -> dict:
    """Accuracy (percent) of CMM's Fig. 3 three classifier types on the same evaluation images.

    * ``intra_modal``: image prototypes — ŷ = argmax_c cos(x, μ_c), μ_c the normalized mean of the
      normalized few-shot train images of class c (``x_train`` [m, d]: every view one row, as CMM
      trains; classes without train images are never predicted, and counted in
      ``classes_without_train_images``);
    * ``inter_modal``: text prototypes — CLIP zero-shot, ŷ = argmax_c cos(x, T0_c);
    * ``cross_modal``: ŷ = argmax ``cmm_logits`` [n, C], the run's Logits_CMM alone
      (100·normalize(x̂W + x̂)·Tᵀ, no fusion); None when not given (runs without a map).

    Returns {"intra_modal", "inter_modal", "cross_modal", "eval_images", "train_images",
    "classes_without_train_images"}. Accuracies in percent, as in ``result.json``.
    """
    block = _block(block)
    T0 = _features(T0, "text prototypes T0", min_rows=2)
    C, d = T0.shape
    xt = _features(x_train, "train image features", check_finite=False)  # checked by _normalize
    xe = _features(x_eval, "eval image features", check_finite=False)
    for name, x in (("train image features", xt), ("eval image features", xe)):
        if x.shape[1] != d:
            raise CmmError(f"{name} have width {x.shape[1]} but T0 has width {d}.", "Same backbone for both.")
    yt = _labels(y_train, xt.shape[0], C, "train labels").to(xt.device)
    ye = _labels(y_eval, xe.shape[0], C, "eval labels").to(xe.device)
    sums, counts = _class_sums(_normalize(xt, block, "train image features"), yt, C, block)
    present = counts > 0
    mu = torch.zeros_like(sums)
    mu[present] = _unit(sums[present])
    xh = _normalize(xe, block, "eval image features")
    intra = _argmax_scores(xh, mu.to(xh.dtype).to(xh.device), block, present.to(xh.device))
    inter = _argmax_scores(xh, _normalize(T0, block, "T0").to(xh.device, xh.dtype), block)
    cross = None
    if cmm_logits is not None:
        L = _features(cmm_logits, "cmm_logits")
        if L.shape != (xe.shape[0], C):
            raise CmmError(f"cmm_logits must be [eval images, classes] = [{xe.shape[0]}, {C}]; got {tuple(L.shape)}.")
        cross = _accuracy(L.argmax(1).to(ye.device), ye)
    return {
        "intra_modal": _accuracy(intra, ye),
        "inter_modal": _accuracy(inter, ye),
        "cross_modal": cross,
        "eval_images": int(xe.shape[0]),
        "train_images": int(xt.shape[0]),
        "classes_without_train_images": int((~present).sum()),
    }


# ----------------------------------------------------------------------------
# Fig. 9: where the errors of CLIP and CMM fall


def _share(count: int, of: int) -> dict:
    return {"pct": (100.0 * count / of) if of else None, "count": int(count), "of": int(of)}


def error_flips(y, zero_shot_pred, cmm_only_pred, fused_pred) -> dict:
    """How CLIP's zero-shot (Z), CMM's own (M) and the fused (F) predictions err, on the same images.

    The paper's Fig. 9 draws these without formulas; ours, with y the true class of each image:

    * errors E = {i : Z_i ≠ y_i or M_i ≠ y_i}, the images at least one of the two fused classifiers
      gets wrong;
      **inconsistent errors** = |{i ∈ E : Z_i ≠ M_i}| / |E| — the share of those where the two disagree
      (one right and one wrong, or both wrong with different classes). Fusion can only help there:
      where Z = M ≠ y both scores point to the same wrong class.
    * **correct flips** = |{i : Z_i ≠ y_i, F_i = y_i}| / |{i : Z_i ≠ y_i}| — the share of CLIP's errors
      that the fused CMM prediction corrects.
    * **broken** = |{i : Z_i = y_i, F_i ≠ y_i}| / |{i : Z_i = y_i}| — the reverse: the share of CLIP's
      correct predictions that the fused prediction breaks.

    Each is {"pct" (percent, None when "of" is 0), "count", "of"}; ``breakdown`` counts the four kinds
    of E (``zero_shot_only_wrong``, ``cmm_only_wrong``, ``both_wrong_same``, ``both_wrong_different``)
    so any other reading can be recomputed. Predictions are class ids (argmax of each logits).
    """
    y = _as_tensor(y, "labels")
    if y.dim() != 1:
        raise CmmError(f"labels must be 1-D; got shape {tuple(y.shape)}.")
    n = y.shape[0]
    preds = {}
    given = {"labels": y, "zero_shot_pred": zero_shot_pred, "cmm_only_pred": cmm_only_pred, "fused_pred": fused_pred}
    for name, p in given.items():
        p = _as_tensor(p, name)
        if p.dim() != 1 or p.shape[0] != n:
            raise CmmError(f"{name} must be a 1-D array of {n} class ids; got shape {tuple(p.shape)}.")
        if p.is_floating_point() or p.dtype == torch.bool:
            raise CmmError(f"{name} must be integer class ids; got dtype {p.dtype} (pass argmax of the logits).")
        preds[name] = p.long().cpu()
    y, Z, M, F = preds["labels"], preds["zero_shot_pred"], preds["cmm_only_pred"], preds["fused_pred"]
    zw, mw = Z != y, M != y
    E = zw | mw
    both = zw & mw
    breakdown = {
        "zero_shot_only_wrong": int((zw & ~mw).sum()),
        "cmm_only_wrong": int((~zw & mw).sum()),
        "both_wrong_same": int((both & (Z == M)).sum()),
        "both_wrong_different": int((both & (Z != M)).sum()),
    }
    return {
        "images": int(n),
        "inconsistent_errors": _share(int((E & (Z != M)).sum()), int(E.sum())),
        "correct_flips": _share(int((zw & (F == y)).sum()), int(zw.sum())),
        "broken": _share(int((~zw & (F != y)).sum()), int((~zw).sum())),
        "breakdown": breakdown,
        "accuracy": {
            "zero_shot": _accuracy(Z, y) if n else None,
            "cmm_only": _accuracy(M, y) if n else None,
            "fused": _accuracy(F, y) if n else None,
        },
    }


__all__ = [
    "DISTRIBUTIONS",
    "DISTRIBUTION_LABELS",
    "before_after",
    "class_means",
    "classifier_types",
    "cmm_map",
    "error_flips",
    "gap_measures",
    "l2m",
    "normalize",
    "prototype_gap",
    "rmg",
    "rmg_parts",
    "similarity_distributions",
]
