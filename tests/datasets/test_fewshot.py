"""Few-shot subsets: published indices used as shipped, seeded draws follow the protocol."""

from __future__ import annotations

import numpy as np
import pytest

from cmm_cache.datasets import manifests as mf
from cmm_cache.datasets.fewshot import check_subset, draw, load_published, val_shots
from cmm_cache.datasets.registry import load_dataset
from cmm_cache.errors import CmmError


def _labels(C, per_class, seed=0):
    lab = np.repeat(np.arange(C), per_class)
    return lab[np.random.default_rng(seed).permutation(len(lab))]


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_draw_follows_protocol(shots, seed):
    tl, vl = _labels(7, 20, 1), _labels(7, 6, 2)
    tr, va = draw(tl, vl, shots, seed, 7)
    assert check_subset(tr, va, tl, vl, shots, 7) == []
    assert np.all(np.bincount(tl[tr], minlength=7) == shots)
    assert np.all(np.bincount(vl[va], minlength=7) == min(shots, 4))
    assert tr.dtype == np.int64 and va.dtype == np.int64


def test_draw_is_deterministic_seeded_and_nested():
    tl, vl = _labels(5, 30, 1), _labels(5, 8, 2)
    a = draw(tl, vl, 4, 1, 5)
    b = draw(tl, vl, 4, 1, 5)
    c = draw(tl, vl, 4, 2, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    small, big = draw(tl, vl, 2, 1, 5)[0], draw(tl, vl, 8, 1, 5)[0]
    assert set(small) <= set(a[0]) <= set(big)


def test_draw_refuses_too_few_images():
    tl, vl = _labels(3, 5), _labels(3, 4)
    with pytest.raises(CmmError, match="has 5 train"):
        draw(tl, vl, 8, 1, 3, classnames=["a", "b", "c"])
    with pytest.raises(CmmError, match="val"):
        draw(tl, _labels(3, 2), 4, 1, 3)
    with pytest.raises(CmmError):
        draw(tl, vl, 0, 1, 3)


def test_check_subset_catches_violations():
    tl, vl = _labels(3, 10), _labels(3, 5)
    tr, va = draw(tl, vl, 4, 1, 3)
    assert check_subset(tr, va, tl, vl, 4, 3) == []
    assert check_subset(tr[:-1], va, tl, vl, 4, 3)  # one class short
    assert check_subset(np.r_[tr, tr[:1]], va, tl, vl, 4, 3)  # repeated row
    assert check_subset(tr, va, tl, vl, 8, 3)  # wrong K
    assert val_shots(1) == 1 and val_shots(4) == 4 and val_shots(16) == 4


def test_tiny_fewshot_is_a_draw():
    ds = load_dataset("tiny")
    assert ds.fewshot_indices == {}
    for k in (1, 4, 16):
        tr, va = ds.fewshot(k, 1)
        assert not ds.is_published(k, 1)
        assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, k, 5) == []
    assert ds.max_shots() == 16
    with pytest.raises(CmmError):
        ds.fewshot(17, 1)  # tiny holds 16 train images per class


def _fake_dtd_root(tmp_path):
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    return tmp_path


def test_published_indices_are_used_exactly(tmp_path):
    root = _fake_dtd_root(tmp_path)
    ds = load_dataset("dtd", root)
    m = mf.get_manifest("dtd")
    pub = load_published(mf.data_file(m, m["fewshot"]["file"]))
    tr, va = ds.fewshot(4, 2)
    assert ds.is_published(4, 2)
    assert np.array_equal(tr, pub[(4, 2)][0]) and np.array_equal(va, pub[(4, 2)][1])
    tr[:] = 0  # callers get copies
    assert not np.array_equal(ds.fewshot(4, 2)[0], tr)
    # A group not shipped (seed 4) is a seeded draw under the same protocol.
    assert not ds.is_published(16, 4)
    tr, va = ds.fewshot(16, 4)
    assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, 16, 47) == []
    assert not set(ds.splits["train"].paths[i] for i in tr) & set(ds.splits["val"].paths[i] for i in va)


def test_shift_set_has_no_fewshot(tmp_path):
    m = mf.get_manifest("imagenet_a")
    d = tmp_path / m["folder"] / m["image_dir"]
    for w in m["wnids"]:
        (d / w).mkdir(parents=True)
        (d / w / "a.jpg").write_bytes(b"")
    ds = load_dataset("imagenet-a", tmp_path)
    with pytest.raises(CmmError, match="shift"):
        ds.fewshot(1, 1)
