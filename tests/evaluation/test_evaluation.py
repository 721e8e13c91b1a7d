"""Scoring: the CMM head's logits and fusion, chunked evaluation, shift-class masking."""

import pytest
import torch
from support.synth import World, make_shift_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import evaluate_head
from cmm_cache.evaluation.shift import shift_classes
from cmm_cache.heads.base import normalize_rows
from cmm_cache.heads.cmm import CMMHead, Model, fuse, logits


def test_logits_and_fusion_follow_the_equations():
    m = _model()
    x = normalize_rows(torch.randn(5, 8))
    cmm, clip = logits(m, x)
    torch.testing.assert_close(cmm, 100 * normalize_rows(x @ m.W + x) @ m.T.t())
    torch.testing.assert_close(clip, 100 * x @ m.T0.t())
    torch.testing.assert_close(fuse(cmm, clip, 0.5, "prob"), 0.5 * cmm.softmax(-1) + clip.softmax(-1))
    torch.testing.assert_close(fuse(cmm, clip, 0.5, "logit"), 0.5 * cmm + clip)
    m2 = _model(normalize_T_in_s=True)
    torch.testing.assert_close(logits(m2, x)[0], 100 * normalize_rows(x @ m2.W + x) @ normalize_rows(m2.T).t())


def _model(C=6, d=8, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    T0 = normalize_rows(torch.randn(C, d, generator=g))
    return Model(0.1 * torch.randn(d, d, generator=g), T0 + 0.2 * torch.randn(C, d, generator=g), T0, **kw)


def evaluate(model, x, y, alpha, classes=None, chunk=8192):
    return evaluate_head(CMMHead(model, alpha), x, y, classes, zero_shot_T0=model.T0, chunk=chunk)


def test_chunked_evaluation_equals_one_pass():
    m = _model()
    x = normalize_rows(torch.randn(103, 8))
    y = torch.randint(6, (103,))
    assert evaluate(m, x, y, 0.7, chunk=10) == evaluate(m, x, y, 0.7, chunk=1000)


# ----------------------------------------------------------------------------
# Shift sets


def _shift(tmp_path, classes, wnids=None, run_C=12):
    world = World(C=run_C, d=16)
    return open_cache(make_shift_cache(tmp_path / "s.h5", world, classes, test_per_class=3, wnids=wnids))


def test_shift_classes_map_by_imagenet_index_and_wnid(tmp_path):
    run_wnids = [f"n{i:08d}" for i in range(12)]
    c = _shift(tmp_path, [3, 7, 11, 0])
    assert shift_classes([f"c{i}" for i in range(12)], run_wnids, c).tolist() == [3, 7, 11, 0]


def test_shift_with_wrong_wnids_or_out_of_range_index_is_refused(tmp_path):
    run_wnids = [f"n{i:08d}" for i in range(12)]
    c = _shift(tmp_path, [3, 7], wnids=["n00000003", "n00000008"])
    with pytest.raises(CmmError, match="WordNet"):
        shift_classes([f"c{i}" for i in range(12)], run_wnids, c)
    with pytest.raises(CmmError, match="index"):
        shift_classes([f"c{i}" for i in range(5)], None, _shift(tmp_path, [3, 7]))


def test_shift_masking_scores_only_the_subset_columns():
    """A distractor outside the subset would win every image; scoring the subset ignores it."""
    d, C = 8, 6
    T0 = torch.eye(C, d)
    T0[5] = normalize_rows(torch.ones(1, d))[0]  # class 5: close to everything
    subset = torch.tensor([2, 0, 4])
    x = normalize_rows(T0[subset] + 1.2 * T0[5])  # images of classes 2, 0, 4, all nearest to class 5
    y_local = torch.tensor([0, 1, 2])  # labels index into the subset
    m = Model(None, T0.clone(), T0)
    assert evaluate(m, x, y_local, 1.0, classes=subset)["acc"] == 100.0
    assert (logits(m, x)[1].argmax(1) == 5).all()  # unmasked, class 5 takes every image


# ----------------------------------------------------------------------------
# Synthetic modality gap: CMM vs zero-shot and the ablations of Table 6
