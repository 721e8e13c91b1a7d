"""The gap measures against independent, plainly written numpy computations.

Every reference here is written from the formula (or, for RMG, transcribed from the official code's
steps: full n × n Gram matrix, zeroed diagonal, ``where(m > 0, m, 1e-3)``), never by calling the
library, so a wrong formula, a wrong class weighting or a wrong pair set fails a test.
"""

import math

import numpy as np
import pytest
import torch

from cmm_cache.analysis import gap
from cmm_cache.errors import CmmError

# ----------------------------------------------------------------------------
# Data and plain references


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted(sizes=(5, 9, 14, 3, 20), d=16, noise=0.3, gap_scale=0.8, seed=0):
    """Images = class centre + noise; text = class centre + one fixed gap vector (the planted gap)."""
    rng = np.random.default_rng(seed)
    C = len(sizes)
    centres = unit(rng.normal(size=(C, d)))
    g = gap_scale * unit(rng.normal(size=d))
    y = np.repeat(np.arange(C), sizes)
    v = centres[y] + noise * rng.normal(size=(len(y), d))
    t = centres + g
    return v, y, t


def ref_l2m(v, y, t, normalize_means=False):
    vh, th = unit(v), unit(t)
    classes = np.unique(y)
    means = np.stack([vh[y == c].mean(0) for c in classes])
    if normalize_means:
        means = unit(means)
    return float(np.linalg.norm(means.mean(0) - th[classes].mean(0)))


def ref_rmg_official(v, y, t):
    """Step by step as lmb-freiburg/two-effects-one-trigger analysis/gap_precompute.py compute_rmg (imagenet)."""
    image_features, text_features = unit(v), unit(t)
    text_feature_per_image = np.stack([text_features[label] for label in y], axis=0)
    matching = np.sum(image_features * text_feature_per_image, axis=1).mean()
    matching = 1 - (matching + 1) / 2
    matching = matching if matching > 0 else 1e-3  # torch.where(m > 0, m, ones * 1e-3)
    i_x_i = image_features @ image_features.T
    np.fill_diagonal(i_x_i, 0)
    mean_img = i_x_i.sum() / (math.prod(i_x_i.shape) - i_x_i.shape[0])
    mean_img = 1 - (mean_img + 1) / 2
    t_x_t = text_features @ text_features.T
    np.fill_diagonal(t_x_t, 0)
    mean_txt = t_x_t.sum() / (math.prod(t_x_t.shape) - t_x_t.shape[0])
    mean_txt = 1 - (mean_txt + 1) / 2
    normalizer = matching + (mean_img + mean_txt) / 2
    return float(matching / normalizer), float(matching)


def ref_distributions(v, y, t):
    """Every value of the three Fig. 7 distributions, by enumeration."""
    vh, th = unit(v), unit(t)
    S = vh @ th.T
    n, C = S.shape
    matched = S[np.arange(n), y]
    mism = S[np.arange(C)[None, :] != y[:, None]]
    G = vh @ vh.T
    iu = np.triu_indices(n, k=1)
    cross = y[iu[0]] != y[iu[1]]
    img = G[iu][cross]
    return {"matched": matched, "mismatched": mism, "image_image": img}


def numeric_leaves(d, prefix=""):
    """{path: number} for every int/float leaf (bools and strings are not compared numerically)."""
    out = {}
    for k, val in d.items():
        if isinstance(val, dict):
            out.update(numeric_leaves(val, f"{prefix}{k}."))
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            out[f"{prefix}{k}"] = float(val)
    return out


def random_rotation(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))  # a proper draw from the orthogonal group


# ----------------------------------------------------------------------------
# L2M and the prototype gap


def test_l2m_of_a_planted_gap_equals_the_direct_computation():
    v, y, t = planted()
    got = gap.l2m(torch.from_numpy(v), torch.from_numpy(y), torch.from_numpy(t))
    assert abs(got - ref_l2m(v, y, t)) < 1e-4
    assert abs(got - ref_l2m(v, y, t)) < 1e-12  # float64 in, float64 accumulation
    # the classes are unequal (5..20 images): the class-balanced centre is not the plain image mean
    plain = float(np.linalg.norm(unit(v).mean(0) - unit(t).mean(0)))
    assert abs(got - plain) > 1e-3
    # float32 and float16 inputs (the cache's dtype) agree within the 1e-4 / half precision
    assert abs(gap.l2m(v.astype(np.float32), y, t.astype(np.float32)) - ref_l2m(v, y, t)) < 1e-4
    assert abs(gap.l2m(v.astype(np.float16), y, t.astype(np.float16)) - ref_l2m(v, y, t)) < 2e-3


def test_l2m_on_a_balanced_split_is_liangs_unweighted_formula():
    v, y, t = planted(sizes=(12, 12, 12, 12))
    liang = float(np.linalg.norm(unit(v).mean(0) - unit(t).mean(0)))  # Weixin-Liang/Modality-Gap gap_distance
    assert gap.l2m(v, y, t) == pytest.approx(liang, abs=1e-12)


def test_l2m_with_normalized_class_means_is_the_other_documented_variant():
    v, y, t = planted()
    assert gap.l2m(v, y, t, normalize_class_means=True) == pytest.approx(ref_l2m(v, y, t, True), abs=1e-12)
    assert abs(gap.l2m(v, y, t, normalize_class_means=True) - gap.l2m(v, y, t)) > 1e-3  # a different number


def test_l2m_uses_only_classes_that_have_images():
    v, y, t = planted(sizes=(6, 0, 7, 8))  # class 1 has no image in this split
    assert set(np.unique(y)) == {0, 2, 3}
    assert gap.l2m(v, y, t) == pytest.approx(ref_l2m(v, y, t), abs=1e-12)
    assert gap.prototype_gap(v, y, t)["classes"] == 3


def test_prototype_gap_equals_the_direct_computation():
    v, y, t = planted()
    vh, th = unit(v), unit(t)
    mu = unit(np.stack([vh[y == c].mean(0) for c in range(len(t))]))
    got = gap.prototype_gap(v, y, t)
    assert got["l2"] == pytest.approx(np.linalg.norm(mu - th, axis=1).mean(), abs=1e-12)
    assert got["cos"] == pytest.approx((mu * th).sum(1).mean(), abs=1e-12)
    assert got["classes"] == len(t)


def test_a_larger_planted_gap_gives_larger_measures():
    small = gap.gap_measures(*planted(gap_scale=0.2))
    large = gap.gap_measures(*planted(gap_scale=1.2))
    assert large["l2m"] > small["l2m"]
    assert large["prototype_gap"]["l2"] > small["prototype_gap"]["l2"]
    assert large["prototype_gap"]["cos"] < small["prototype_gap"]["cos"]
    assert large["rmg"] > small["rmg"]


def test_identical_modalities_give_zero_gap():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(4, 8))
    y = np.repeat(np.arange(4), [3, 5, 2, 6])
    v = t[y] * rng.uniform(0.5, 3.0, size=(len(y), 1))  # same directions, other lengths: normalization removes them
    m = gap.gap_measures(v, y, t)
    assert m["l2m"] == pytest.approx(0.0, abs=1e-12)
    assert m["prototype_gap"]["l2"] == pytest.approx(0.0, abs=1e-7)  # sqrt of a rounding-level 2 − 2cos
    assert m["prototype_gap"]["cos"] == pytest.approx(1.0, abs=1e-12)
    assert m["rmg_parts"]["m_raw"] == pytest.approx(0.0, abs=1e-12)
    assert m["similarities"]["matched"]["p5"] == pytest.approx(1.0, abs=1e-12)
    # RMG is ~0 too, but the official code replaces a non-positive m by 1e-3: at most that floor's RMG
    p = m["rmg_parts"]
    assert m["rmg"] <= 1e-3 / (1e-3 + (p["d_image"] + p["d_text"]) / 2) + 1e-12


def test_one_shared_rotation_changes_no_measure():
    v, y, t = planted(d=12, sizes=(40, 30, 50, 20))
    Q = random_rotation(12, seed=7)
    # max_pairs=500: the mismatched and image-image percentiles come from the seeded sample here
    a = gap.gap_measures(v, y, t, max_pairs=500, seed=4)
    b = gap.gap_measures(v @ Q, y, t @ Q, max_pairs=500, seed=4)
    assert a["similarities"]["image_image"]["percentiles_from"] == "sample"
    la, lb = numeric_leaves(a), numeric_leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert lb[k] == pytest.approx(la[k], abs=1e-9), k
    ct_a = gap.classifier_types(v, y, v[::2], y[::2], t)
    ct_b = gap.classifier_types(v @ Q, y, v[::2] @ Q, y[::2], t @ Q)
    assert ct_a == ct_b


# ----------------------------------------------------------------------------
# RMG


def test_rmg_equals_a_transcription_of_the_official_code():
    v, y, t = planted(sizes=(7, 11, 4, 9, 13), d=24, seed=5)
    ref, m_ref = ref_rmg_official(v, y, t)
    parts = gap.rmg_parts(v, y, t)
    assert parts["rmg"] == pytest.approx(ref, abs=1e-12)
    assert parts["m"] == pytest.approx(m_ref, abs=1e-12)
    assert gap.rmg(v, y, t) == parts["rmg"]
    # and the float32 official run (their dtype) agrees with ours to float32 precision
    ref32, _ = ref_rmg_official(v.astype(np.float32), y, t.astype(np.float32))
    assert parts["rmg"] == pytest.approx(ref32, abs=1e-5)


def test_rmg_image_term_includes_same_class_pairs_as_the_official_code_does():
    v, y, t = planted(sizes=(10, 10, 10))
    vh = unit(v)
    n = len(y)
    all_pairs = ((vh @ vh.T).sum() - np.trace(vh @ vh.T)) / (n * n - n)
    parts = gap.rmg_parts(v, y, t)
    assert parts["image_cos_mean"] == pytest.approx(all_pairs, abs=1e-12)
    # not the cross-class mean (which the Fig. 7 image-image distribution uses)
    cross = ref_distributions(v, y, t)["image_image"].mean()
    assert abs(parts["image_cos_mean"] - cross) > 1e-2


def test_rmg_replaces_only_a_non_positive_m_as_the_official_code_does():
    # images exactly on their prototypes (unit basis vectors: every dot is exactly 1) -> m = 0 -> 1e-3
    t = np.eye(3)
    y = np.array([0, 0, 1, 2, 2, 2])
    p = gap.rmg_parts(t[y], y, t)
    assert p["m_raw"] == 0.0 and p["m_replaced"] and p["m"] == 1e-3
    assert p["rmg"] == pytest.approx(ref_rmg_official(t[y], y, t)[0], abs=1e-15)
    # a tiny positive m (0 < m < 1e-3) is kept, not raised to 1e-3: their code is where(m > 0), not max
    rng = np.random.default_rng(1)
    v = t[y] + 1e-3 * rng.normal(size=(len(y), 3))
    p = gap.rmg_parts(v, y, t)
    assert 0 < p["m_raw"] < 1e-3 and not p["m_replaced"] and p["m"] == p["m_raw"]
    ref, m_ref = ref_rmg_official(v, y, t)
    assert p["rmg"] == pytest.approx(ref, rel=1e-9) and m_ref == pytest.approx(p["m"], rel=1e-9)
    clamped = 1e-3 / (1e-3 + (p["d_image"] + p["d_text"]) / 2)
    assert p["rmg"] < clamped / 2  # what max(1e-3, m) would have given is clearly different


# ----------------------------------------------------------------------------
# Fig. 7 distributions


@pytest.mark.parametrize("block", [3, 4096])
def test_distributions_enumerate_every_value_when_small(block):
    v, y, t = planted(sizes=(6, 9, 4, 11), d=10, seed=2)
    ref = ref_distributions(v, y, t)
    got = gap.similarity_distributions(v, y, t, block=block)
    for name, vals in ref.items():
        g = got[name]
        assert g["percentiles_from"] == "all" and g["count"] == len(vals) == g["sample"]
        assert g["mean"] == pytest.approx(vals.mean(), abs=1e-12)
        for q in (5, 50, 95):
            assert g[f"p{q}"] == pytest.approx(np.percentile(vals, q), abs=1e-12), (name, q)
    n, C = len(y), len(t)
    assert got["mismatched"]["count"] == n * (C - 1)
    assert got["image_image"]["count"] == (n * n - (np.bincount(y) ** 2).sum()) // 2


def test_sampled_distributions_keep_exact_means_and_draw_only_valid_pairs():
    v, y, t = planted(sizes=(6, 9, 4, 11), d=10, seed=2)
    ref = ref_distributions(v, y, t)
    got, values = gap.similarity_distributions(v, y, t, max_pairs=60, seed=11, return_values=True)
    for name in ("mismatched", "image_image"):
        g = got[name]
        assert g["percentiles_from"] == "sample" and g["sample"] == 60 == len(values[name])
        assert g["count"] == len(ref[name])
        assert g["mean"] == pytest.approx(ref[name].mean(), abs=1e-12)  # from sums, never from the sample
        # every sampled value is one of the distribution's values: no same-class pair, no matched pair
        dist = np.abs(values[name][:, None] - ref[name][None, :]).min(1)
        assert dist.max() < 1e-12, name
        assert g["p50"] == pytest.approx(np.percentile(values[name], 50), abs=1e-15)
    assert got["matched"]["percentiles_from"] == "all"  # n values: always whole
    assert got["seed"] == 11 and got["max_pairs"] == 60


def test_sampled_image_pairs_are_uniform_over_cross_class_pairs():
    # very unequal classes with different spreads: a sampler that drew the first image uniformly
    # (instead of by its number of cross-class partners) would over-weight the small classes
    v, y, t = planted(sizes=(3, 60, 8), d=6, noise=0.8, seed=9)
    ref = ref_distributions(v, y, t)["image_image"]
    _, values = gap.similarity_distributions(v, y, t, max_pairs=40_000, seed=0, return_values=True)
    se = ref.std() / math.sqrt(40_000)
    assert abs(values["image_image"].mean() - ref.mean()) < 4 * se
    for q in (5, 50, 95):
        assert abs(np.percentile(values["image_image"], q) - np.percentile(ref, q)) < 0.02


def test_sampling_is_seeded():
    v, y, t = planted()
    a = gap.similarity_distributions(v, y, t, max_pairs=50, seed=1)
    b = gap.similarity_distributions(v, y, t, max_pairs=50, seed=1)
    c = gap.similarity_distributions(v, y, t, max_pairs=50, seed=2)
    assert a == b
    assert a["image_image"]["p50"] != c["image_image"]["p50"]
    assert a["image_image"]["mean"] == c["image_image"]["mean"]


# ----------------------------------------------------------------------------
# all measures, before/after, the CMM map


def test_gap_measures_collects_every_measure():
    v, y, t = planted()
    m = gap.gap_measures(v, y, t)
    assert m["l2m"] == pytest.approx(ref_l2m(v, y, t), abs=1e-12)
    assert m["rmg"] == pytest.approx(ref_rmg_official(v, y, t)[0], abs=1e-12)
    assert m["prototype_gap"] == gap.prototype_gap(v, y, t)
    assert m["similarities"] == gap.similarity_distributions(v, y, t)
    assert (m["images"], m["classes"], m["classes_with_images"], m["dim"]) == (len(y), len(t), len(t), v.shape[1])
    assert "class-balanced" in m["l2m_image_centre"]


def test_cmm_map_is_normalize_of_vhat_w_plus_vhat():
    rng = np.random.default_rng(0)
    v, W = rng.normal(size=(9, 5)), 0.3 * rng.normal(size=(5, 5))
    vh = unit(v)
    np.testing.assert_allclose(gap.cmm_map(v, W, block=2).numpy(), unit(vh @ W + vh), atol=1e-12)
    np.testing.assert_allclose(gap.cmm_map(v).numpy(), vh, atol=1e-12)  # no map: v̂ itself
    with pytest.raises(CmmError, match=r"\[d, d\]"):
        gap.cmm_map(v, W[:, :4])


def test_before_after_measures_the_mapped_features_against_the_runs_prototypes():
    v, y, T0 = planted()
    rng = np.random.default_rng(1)
    W, T = 0.2 * rng.normal(size=(16, 16)), T0 + 0.3 * rng.normal(size=T0.shape)
    out = gap.before_after(v, y, T0, T=T, W=W, max_pairs=100, seed=3)
    assert out["before"] == gap.gap_measures(v, y, T0, max_pairs=100, seed=3)
    vh = unit(v)
    assert out["after"]["l2m"] == pytest.approx(ref_l2m(unit(vh @ W + vh), y, T), abs=1e-12)
    no_map = gap.before_after(v, y, T0, T=T)["after"]  # the no-W ablation: v̂ against its moved prototypes
    assert no_map["l2m"] == pytest.approx(ref_l2m(v, y, T), abs=1e-12)
    assert gap.before_after(v, y, T0)["after"] is None  # no prototypes of its own: "after" is not defined
    with pytest.raises(CmmError, match="without prototypes"):
        gap.before_after(v, y, T0, W=W)
    with pytest.raises(CmmError, match="shape"):
        gap.before_after(v, y, T0, T=T[:3])


def test_class_means_of_normalized_features():
    v, y, t = planted(sizes=(4, 0, 5))
    means, counts = gap.class_means(v, y, 3)
    assert counts.tolist() == [4, 0, 5]
    np.testing.assert_allclose(means[0].numpy(), unit(v)[y == 0].mean(0), atol=1e-12)
    assert float(means[1].abs().sum()) == 0.0


# ----------------------------------------------------------------------------
# Fig. 3 and Fig. 9


def test_classifier_types_against_direct_nearest_prototype_rules():
    rng = np.random.default_rng(4)
    v, y, t = planted(sizes=(20, 20, 20, 20), noise=0.6, seed=4)
    tr = np.concatenate([np.flatnonzero(y == c)[:3] for c in (0, 1, 3)])  # class 2: no train image
    ev = np.setdiff1d(np.arange(len(y)), tr)
    logits = rng.normal(size=(len(ev), 4))
    got = gap.classifier_types(v[tr], y[tr], v[ev], y[ev], t, cmm_logits=logits)
    xh = unit(v[ev])
    mu = np.full((4, v.shape[1]), np.nan)
    for c in (0, 1, 3):
        mu[c] = unit(unit(v[tr][y[tr] == c]).mean(0))
    s_intra = np.where(np.isnan(mu).any(1)[None, :], -np.inf, xh @ np.nan_to_num(mu).T)
    assert got["intra_modal"] == pytest.approx(100 * np.mean(s_intra.argmax(1) == y[ev]), abs=1e-9)
    assert got["inter_modal"] == pytest.approx(100 * np.mean((xh @ unit(t).T).argmax(1) == y[ev]), abs=1e-9)
    assert got["cross_modal"] == pytest.approx(100 * np.mean(logits.argmax(1) == y[ev]), abs=1e-9)
    assert got["classes_without_train_images"] == 1
    assert (got["eval_images"], got["train_images"]) == (len(ev), len(tr))
    assert gap.classifier_types(v[tr], y[tr], v[ev], y[ev], t)["cross_modal"] is None
    with pytest.raises(CmmError, match="cmm_logits"):
        gap.classifier_types(v[tr], y[tr], v[ev], y[ev], t, cmm_logits=logits[:, :3])


def test_error_flips_on_a_hand_made_ten_sample_example():
    #            0  1  2  3  4  5  6  7  8  9
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    Z = np.array([0, 1, 2, 3, 4, 1, 2, 0, 0, 4])  # CLIP zero-shot: wrong at 5, 6, 7, 8
    M = np.array([0, 1, 2, 0, 4, 1, 1, 0, 2, 4])  # CMM alone: wrong at 3, 5, 7, 8
    F = np.array([0, 1, 2, 3, 3, 0, 1, 0, 2, 4])  # fused: fixes 5, 6; breaks 4
    r = gap.error_flips(y, Z, M, F)
    # errors of either: {3, 5, 6, 7, 8}; Z != M at 3 (M wrong), 6 (Z wrong), 8 (different wrong classes)
    assert r["inconsistent_errors"] == {"pct": 60.0, "count": 3, "of": 5}
    # CLIP's errors {5, 6, 7, 8}; the fused prediction is right at 5 and 6
    assert r["correct_flips"] == {"pct": 50.0, "count": 2, "of": 4}
    # CLIP right at {0, 1, 2, 3, 4, 9}; the fused prediction is wrong at 4
    assert r["broken"]["count"] == 1 and r["broken"]["of"] == 6
    assert r["broken"]["pct"] == pytest.approx(100 / 6)
    assert r["breakdown"] == {
        "zero_shot_only_wrong": 1,
        "cmm_only_wrong": 1,
        "both_wrong_same": 2,
        "both_wrong_different": 1,
    }
    assert r["accuracy"] == {"zero_shot": 60.0, "cmm_only": 60.0, "fused": 70.0}
    assert r["images"] == 10
    # no CLIP error at all: the share of corrected errors is not defined (None), not 0
    r = gap.error_flips(y, y, M, F)
    assert r["correct_flips"] == {"pct": None, "count": 0, "of": 0}
    # torch tensors work the same
    assert gap.error_flips(*(torch.from_numpy(a) for a in (y, Z, M, F)))["correct_flips"]["count"] == 2


# ----------------------------------------------------------------------------
# Bad input: one clear CmmError each


def _set():
    v, y, t = planted(sizes=(3, 4, 5), d=6)
    return v, y, t


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v, y, t: (v[0], y, t), "2-D"),
        (lambda v, y, t: (v[None], y, t), "2-D"),
        (lambda v, y, t: (v, y, t[:, :5]), "width"),
        (lambda v, y, t: (v, y[:-1], t), "class ids"),
        (lambda v, y, t: (v, y.astype(float), t), "integers"),
        (lambda v, y, t: (v, np.where(y == 2, 3, y), t), "outside"),
        (lambda v, y, t: (v, np.where(y == 0, -1, y), t), "outside"),
        (lambda v, y, t: (v, np.zeros_like(y), t), "fewer than 2 classes"),
        (lambda v, y, t: (v, np.zeros_like(y), t[:1]), "at least 2"),
        (lambda v, y, t: (np.where(np.arange(len(y))[:, None] == 4, np.nan, v), y, t), "non-finite"),
        (lambda v, y, t: (v, y, np.where(np.arange(3)[:, None] == 1, np.inf, t)), "non-finite"),
        (lambda v, y, t: (np.where(np.arange(len(y))[:, None] == 2, 0.0, v), y, t), "all zeros"),
        (lambda v, y, t: (v.astype(np.int64), y, t), "floating-point"),
        (lambda v, y, t: (v[:1], y[:1], t), "at least 2 row"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, message):
    v, y, t = mutate(*_set())
    for fn in (gap.l2m, gap.prototype_gap, gap.rmg, gap.similarity_distributions, gap.gap_measures):
        with pytest.raises(CmmError, match=message):
            fn(v, y, t)


def test_bad_options_are_clear_errors():
    v, y, t = _set()
    with pytest.raises(CmmError, match="max_pairs"):
        gap.similarity_distributions(v, y, t, max_pairs=0)
    with pytest.raises(CmmError, match="seed"):
        gap.similarity_distributions(v, y, t, seed=-1)
    with pytest.raises(CmmError, match="block"):
        gap.l2m(v, y, t, block=0)
    with pytest.raises(CmmError, match="integer class ids"):
        gap.error_flips(y, y.astype(float), y, y)
    with pytest.raises(CmmError, match="10 class ids|12 class ids"):
        gap.error_flips(y, y[:-1], y, y)
    with pytest.raises(CmmError, match="non-finite"):
        gap.classifier_types(v, y, np.full_like(v, np.nan), y, t)
