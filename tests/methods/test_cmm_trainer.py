"""The trainer equals the equations (a plain autograd transcription) and is deterministic."""

import itertools
import math

import numpy as np
import pytest
import torch

from cmm_cache.heads.base import normalize_rows
from cmm_cache.methods.base import train_samples
from cmm_cache.methods.trainers.cmm.torch_loop import clip_prob_true, cmm_grads
from cmm_cache.methods.trainers.cmm.trainer import (
    ReferenceCMM,
    TrainConfig,
    draw_batches,
    fit_reference,
    lr_schedule,
    train_cmm,
)

OPTIONS = list(itertools.product([True, False], [True, False], [False, True], [False, True], ["prob", "logit"]))


def _batch(C=13, d=24, B=8, seed=0, perturb=True):
    g = torch.Generator().manual_seed(seed)
    T0 = normalize_rows(torch.randn(C, d, generator=g, dtype=torch.float64))
    x = normalize_rows(torch.randn(B, d, generator=g, dtype=torch.float64) + 0.5 * T0[: B % C])
    y = torch.randint(C, (B,), generator=g)
    dT = 0.3 * torch.randn(C, d, generator=g, dtype=torch.float64) if perturb else 0
    dW = 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64) if perturb else 0
    return T0, x, y, dT, dW


@pytest.mark.parametrize("use_map,triplet,norm_T,cmm_only,fusion", OPTIONS)
def test_loss_and_gradients_equal_autograd_transcription(use_map, triplet, norm_T, cmm_only, fusion):
    cfg = TrainConfig(
        use_map=use_map, triplet=triplet, normalize_T_in_s=norm_T, cmm_only=cmm_only, fusion=fusion, train_alpha=0.7
    )
    T0, x, y, dT, dW = _batch()
    ref = ReferenceCMM(T0, cfg).double()
    with torch.no_grad():  # away from the starting point, so every term has a gradient
        ref.T.add_(dT)
        if ref.W is not None:
            ref.W.add_(dW)
    loss = ref(x, y)
    loss.backward()
    with torch.no_grad():
        W = ref.W.detach() if use_map else None
        l2, gW, gT = cmm_grads(W, ref.T.detach(), T0, x, y, clip_prob_true(x, y, T0), cfg, want_loss=True)
    assert abs(loss.item() - l2.item()) < 1e-12
    torch.testing.assert_close(gT, ref.T.grad, rtol=1e-10, atol=1e-12)
    if use_map:
        torch.testing.assert_close(gW, ref.W.grad, rtol=1e-10, atol=1e-12)
    else:
        assert gW is None


def test_float32_fast_kernels_match_float64_with_the_trainers_layout():
    """In float32 the trainer's d×d products may go through oneDNN and W is held
    transposed; the gradients still match the float64 transcription and gW.t()
    is contiguous (the layout the fused AdamW step gets)."""
    cfg = TrainConfig()
    T0, x, y, dT, dW = _batch(C=20, d=64)
    ref = ReferenceCMM(T0, cfg).double()
    with torch.no_grad():
        ref.T.add_(dT)
        ref.W.add_(dW)
    ref(x, y).backward()
    f = lambda t: t.float()  # noqa: E731
    Wt = f(dW).t().contiguous()
    _, gW, gT = cmm_grads(Wt.t(), f(T0 + dT), f(T0), f(x), y, clip_prob_true(f(x), y, f(T0)), cfg)
    assert gW.t().is_contiguous()
    torch.testing.assert_close(gW.double(), ref.W.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gT.double(), ref.T.grad, rtol=1e-4, atol=1e-6)


def test_triplet_uses_hardest_negative_and_margin():
    """With T = T0 the triplet term is mean(max(0, max_{j≠y} cos_j − cos_y + 1))."""
    cfg = TrainConfig(cmm_only=True)
    T0, x, y, _, _ = _batch(perturb=False)
    cos = x @ T0.t()
    neg = cos.scatter(1, y[:, None], -math.inf).max(1).values
    expected_tri = torch.clamp(neg - cos.gather(1, y[:, None]).squeeze(1) + 1.0, min=0).mean()
    ce = torch.nn.functional.cross_entropy(100 * cos, y)  # W = 0, T = T0: s = v̂ T0ᵀ
    loss, _, _ = cmm_grads(torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype), T0, T0, x, y, None, cfg, want_loss=True)
    assert abs(loss.item() - (ce + expected_tri).item()) < 1e-10


def test_fit_follows_reference_training():
    """A few dozen steps of the fast trainer (fused AdamW, float64) track torch.optim.AdamW + autograd."""
    g = torch.Generator().manual_seed(3)
    C, d = 7, 16
    T0 = normalize_rows(torch.randn(C, d, generator=g, dtype=torch.float64))
    y = torch.arange(C).repeat_interleave(6)
    x = normalize_rows(T0[y] + 0.8 * torch.randn(len(y), d, generator=g, dtype=torch.float64))
    cfg = TrainConfig(iterations=40, warmup=5, lr=1e-2)
    fast = train_cmm(x, y, T0, cfg)
    W, T, _ = fit_reference(x, y, T0, cfg)
    assert fast.W.abs().max() > 1e-3  # it actually moved
    torch.testing.assert_close(fast.W, W, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fast.T, T, rtol=1e-7, atol=1e-9)


def test_same_seed_same_weights_other_seed_differs():
    g = torch.Generator().manual_seed(0)
    T0 = normalize_rows(torch.randn(5, 12, generator=g))
    y = torch.arange(5).repeat_interleave(4)
    x = normalize_rows(T0[y] + torch.randn(len(y), 12, generator=g))
    a = train_cmm(x, y, T0, TrainConfig(iterations=60), seed=1)
    b = train_cmm(x, y, T0, TrainConfig(iterations=60), seed=1)
    c = train_cmm(x, y, T0, TrainConfig(iterations=60), seed=2)
    assert torch.equal(a.W, b.W) and torch.equal(a.T, b.T)
    assert not torch.equal(a.W, c.W)


def test_no_map_trains_only_T():
    g = torch.Generator().manual_seed(0)
    T0 = normalize_rows(torch.randn(4, 8, generator=g))
    y = torch.arange(4).repeat_interleave(3)
    x = normalize_rows(torch.randn(len(y), 8, generator=g))
    r = train_cmm(x, y, T0, TrainConfig(iterations=20, use_map=False))
    assert r.W is None and not torch.equal(r.T, T0)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(iterations=1000, warmup=50, lr=1e-4, min_lr=1e-5)
    lrs = lr_schedule(cfg)
    assert len(lrs) == 1000
    assert lrs[0] == pytest.approx(1e-4 / 50) and lrs[49] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))  # cosine falls
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-3)


def test_batches_are_drawn_up_front_epoch_by_epoch():
    b = draw_batches(10, 7, 4, seed=5)
    assert b.shape == (7, 4)
    flat = b.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10))  # first pass: every sample once
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert torch.equal(b, draw_batches(10, 7, 4, seed=5))


def test_train_samples_uses_every_view_normalized():
    feats = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float16) * 9
    x, y = train_samples(feats, np.array([0, 2, 1]))
    assert x.shape == (6, 5) and y.tolist() == [0, 0, 2, 2, 1, 1]
    torch.testing.assert_close(x.norm(dim=1), torch.ones(6))


def test_bad_config_is_refused():
    from cmm_cache.errors import CmmError

    with pytest.raises(CmmError):
        TrainConfig(fusion="max").validate()
