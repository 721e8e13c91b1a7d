"""Closed-form methods (GDA, Tip-Adapter) against direct transcriptions of their official code."""

import math

import pytest
import torch
import torch.nn.functional as F

from cmm_cache.heads.tip_adapter import tip_logits
from cmm_cache.methods.base import FitData
from cmm_cache.methods.gda import gda_classifier
from cmm_cache.methods.registry import get_method
from cmm_cache.methods.tip_adapter import _alpha_hits, _class_sums, cache_model, dataset_config, search_grid, search_hp


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def problem(C=5, d=12, shots=3, views=2, n_val=3, seed=0, spread=0.6):
    """A small random FitData (every view a sample, image-major) with per-template text."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(C, d, generator=g), dim=1)
    y_img = torch.arange(C).repeat_interleave(shots)
    base = mu[y_img] + spread * torch.randn(len(y_img), d, generator=g) / math.sqrt(d)
    x = torch.stack([base + 0.05 * torch.randn(base.shape, generator=g) for _ in range(views)], 1)
    y_val = torch.arange(C).repeat_interleave(n_val)
    x_val = F.normalize(mu[y_val] + spread * torch.randn(len(y_val), d, generator=g) / math.sqrt(d), dim=1)
    per = mu[:, None] + 0.8 * torch.randn(C, 3, d, generator=g) / math.sqrt(d)
    return FitData(
        x_train=F.normalize(x, dim=-1).reshape(-1, d),
        y_train=y_img.repeat_interleave(views),
        train_image=torch.arange(len(y_img)).repeat_interleave(views),
        x_val=x_val,
        y_val=y_val,
        T0=F.normalize(per.mean(1), dim=1),
        classnames=[str(i) for i in range(C)],
        shots=shots,
        seed=1,
        _per_template=lambda: per.numpy(),
    )


# ----------------------------------------------------------------------------- GDA


def gda_theirs(vecs, labels, clip_weights, val_features, val_labels):
    """mrflogs/ICLR24 main_few_shots.py `run`, transcribed (CPU, float64; clip_weights is [d, C])."""
    K = clip_weights.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(K)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(K)])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov() + center_vecs.T.cov().trace() * torch.eye(vecs.shape[1])
    )
    ps = torch.ones(K) * 1.0 / K
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best_val_acc, best_alpha = 0, 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        val_logits = 100.0 * val_features @ clip_weights + alpha * (val_features @ W + b)
        acc = 100.0 * float((val_logits.argmax(1) == val_labels).float().mean())
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    return W, b, best_alpha


@pytest.mark.parametrize("views,shots", [(2, 3), (1, 1)])  # (1, 1): tr(Σ) = 0, their pinv of 0
def test_gda_is_their_estimator_and_alpha_search(views, shots):
    data = problem(views=views, shots=shots)
    x, y = data.x_train.double(), data.y_train
    W_t, b_t, alpha_t = gda_theirs(x, y, data.T0.double().t(), data.x_val.double(), data.y_val)
    W, b = gda_classifier(x, y, data.num_classes)
    torch.testing.assert_close(W.t(), W_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, b_t.double(), rtol=1e-6, atol=1e-6)
    m = get_method("gda")
    r = m.fit(data, m.resolve({}))
    assert r.hparams["alpha"] == alpha_t
    xv = data.x_val
    want = 100.0 * xv @ data.T0.t() + alpha_t * (xv.double() @ W_t + b_t).float()
    torch.testing.assert_close(r.head.logits(xv), want, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- Tip-Adapter


def search_theirs(cfg, cache_keys, cache_values, features, labels, clip_weights):
    """gaopengcuhk/Tip-Adapter utils.py `search_hp`, transcribed (cache_keys [d, N], clip_weights [d, C])."""
    beta_list = [i * (cfg["search_scale"][0] - 0.1) / cfg["search_step"][0] + 0.1 for i in range(cfg["search_step"][0])]
    alpha_list = [
        i * (cfg["search_scale"][1] - 0.1) / cfg["search_step"][1] + 0.1 for i in range(cfg["search_step"][1])
    ]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ cache_keys
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
            clip_logits = 100.0 * features @ clip_weights
            tip = clip_logits + cache_logits * alpha
            acc = 100.0 * float((tip.argmax(1) == labels).float().sum()) / len(labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def test_tip_adapter_cache_model_search_and_logits_are_theirs():
    data = problem(spread=1.6)
    keys, labels = cache_model(data)
    views = data.x_train.view(-1, 2, data.dim)
    torch.testing.assert_close(keys, F.normalize(views.mean(1), dim=-1))  # one key per image: its views' mean
    assert torch.equal(labels, data.y_train.view(-1, 2)[:, 0])
    values = F.one_hot(labels).float()
    cfg = {"search_scale": [7, 3], "search_step": [30, 8]}
    want = search_theirs(cfg, keys.t(), values, data.x_val, data.y_val, data.T0.t())
    got = search_hp(keys, values, data.T0, data.x_val, data.y_val, (7, 3), (30, 8))
    assert got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1]) and got[2] == want[2]
    assert 0 < want[2] < 100  # the search had something to choose
    m = get_method("tip-adapter")
    r = m.fit(data, m.resolve({"search_scale": [7, 3], "search_steps": [30, 8]}))
    assert (r.hparams["beta"], r.hparams["alpha"]) == pytest.approx(want[:2])
    x = data.x_val
    direct = 100.0 * x @ data.T0.t() + want[1] * ((-1) * (want[0] - want[0] * (x @ keys.t()))).exp() @ values
    torch.testing.assert_close(r.head.logits(x), direct)
    torch.testing.assert_close(tip_logits(x, keys, values, data.T0, want[1], want[0]), direct)


def test_tip_adapter_fast_paths_equal_the_plain_computation():
    """The search's shortcuts (class sums by reshape, only the classes that can win scored) change no hit."""
    g = torch.Generator().manual_seed(0)
    alphas = torch.tensor(search_grid(3, 20))
    for t in range(100):  # integer-valued cases are full of exact ties
        ints = t % 2 == 0
        clip = torch.randint(0, 5, (7, 6), generator=g).float() if ints else 3 * torch.randn(7, 6, generator=g)
        cache = torch.randint(0, 3, (4, 7, 6), generator=g).float() if ints else torch.rand(4, 7, 6, generator=g)
        y = torch.randint(0, 6, (7,), generator=g)
        full = ((clip[None, None] + alphas[None, :, None, None] * cache[:, None]).argmax(-1) == y).sum(-1)
        assert torch.equal(_alpha_hits(clip, cache, alphas, y), full)
    E = torch.rand(2, 3, 8, generator=g)
    for labels in (torch.tensor([1, 0, 1, 0, 2, 3, 2, 3]), torch.tensor([0, 0, 0, 1, 2, 3, 3, 1])):
        values = F.one_hot(labels, 4).float()
        order, sums = _class_sums(values)
        want = E @ values
        torch.testing.assert_close(sums(E[..., order] if order is not None else E), want)
    assert _class_sums(F.one_hot(torch.tensor([0, 0, 1]), 2).float())[0] is None  # unequal counts: matmul


def test_tip_adapter_grids_and_published_configs():
    assert search_grid(13, 200)[:2] == pytest.approx([0.1, 0.1 + 12.9 / 200]) and len(search_grid(13, 200)) == 200
    assert dataset_config("dtd")[0] == (13.0, 13.0) and dataset_config("pets") == dataset_config("oxford_pets")
    assert dataset_config("my-folder") == dataset_config("imagenet")


def test_zero_shot_is_the_cached_text_classifier():
    data = problem()
    m = get_method("zero-shot")
    r = m.fit(data, m.resolve({}))
    torch.testing.assert_close(r.head.logits(data.x_val), 100.0 * data.x_val @ data.T0.t())
