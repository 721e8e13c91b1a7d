"""lp++ and clap against literal transcriptions of their official code (same data, same draws)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.methods.base import fit_data
from cmm_cache.methods.clap import class_penalties
from cmm_cache.methods.lp_pp import clip_text_classifier, lp_pp_init
from cmm_cache.methods.registry import get_method
from cmm_cache.runs.protocol import fit_run


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return open_cache(make_text_cache(tmp_path_factory.mktemp("lpclap") / "c.h5", views=5, M=3))


# ------------------------------------------------------------------------------------------- LP++


def _lp_pp_official(features, labels, shots, text_weights, bias, epochs):
    """methods/linear_probe_p2.py (LinearProbe_P2.forward) without the val/test scoring, float32 on the CPU."""
    C = int(features.shape[0] / shots)
    one_hot = F.one_hot(labels, C).float()
    centroids = one_hot.t() @ features  # compute_centroids: one_hot.bmm(z_s), the division commented out
    classifier = torch.nn.Linear(features.shape[1], C, bias=True)
    classifier.weight.data = centroids
    classifier.bias.data = bias.clone()
    ff_t = (features.T @ features).double().numpy()
    lr_temp = (4 * features.shape[0]) / max(np.linalg.eigh(ff_t)[0])  # calculate_lr_w
    z = features @ text_weights
    alpha_tilde = (one_hot * z / one_hot.sum(-2, keepdim=True)).sum(0)  # compute_centroids_alpha
    alpha_tilde = alpha_tilde.double() * shots
    alpha_init = torch.mean(250 / shots * alpha_tilde)  # calculate_init_alpha
    alpha_vec = (alpha_init * torch.ones(1, C)).float().requires_grad_(True)
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(z, 2), dim=0)) * 4)  # calculate_lr_alpha
    optimizer = torch.optim.SGD(classifier.parameters(), float(lr_temp), momentum=0.9)
    for epoch in range(epochs):
        vision_logits = classifier(features)
        text_logits = features @ text_weights
        logits = vision_logits + torch.ones(features.shape[0], 1) @ alpha_vec * text_logits
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
    return classifier.weight.detach(), classifier.bias.detach(), alpha_vec.detach()[0], lr_temp, float(lr_alpha)


def test_lp_pp_is_their_loop(cache):
    data = fit_data(cache, 4, 1).select_views(["rrc-1"])  # their one augmented pass per image
    T, warn = clip_text_classifier(data)
    assert warn == []
    e = F.normalize(data.text_per_template(), dim=-1)
    torch.testing.assert_close(T, F.normalize(e.mean(1), dim=-1))  # clip_classifier: normalized templates first
    init = lp_pp_init(data.x_train, data.y_train, T, data.num_classes, data.seed)
    m = get_method("lp++")
    r = m.fit(data, m.resolve({"epochs": 40}))
    W, b, alpha, lr_w, lr_a = _lp_pp_official(data.x_train, data.y_train, 4, T.t(), init["b"], 40)
    assert init["lr_w"] == pytest.approx(lr_w, rel=1e-6) and init["lr_alpha"] == pytest.approx(lr_a, rel=1e-5)
    torch.testing.assert_close(r.head.weight, W + alpha[:, None] * T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r.head.bias, b, rtol=1e-4, atol=1e-5)
    assert r.hparams["epoch"] == 40 and r.hparams["alpha_mean"] == pytest.approx(float(alpha.mean()), rel=1e-4)
    # the α gradient accumulates over epochs: resetting it would give another α
    assert not torch.allclose(alpha, torch.full_like(alpha, r.hparams["alpha_init"]))


def test_lp_pp_uses_one_augmented_view_and_no_validation_unless_asked(cache):
    r, _ = fit_run(cache, 4, 1, method="lp++", options={"epochs": 30})
    assert r["train_views"] == ["rrc-1"] and r["hparams"]["epoch"] == 30 and r["num_train_samples"] == 24
    assert "none" in get_method("lp++").selection and "val" in get_method("lp++").selection
    v, _ = fit_run(cache, 4, 1, method="lp++", options={"epochs": 30, "select_epoch_on_val": True})
    assert 1 <= v["hparams"]["epoch"] <= 30 and v["config_key"] != r["config_key"]


def test_lp_pp_without_per_template_text_uses_t0_and_says_so(tmp_path):
    from support.synth import make_cache

    c = open_cache(make_cache(tmp_path / "old.h5", C=4, d=8, shots=(1,), seeds=(1,))[0])
    r, _ = fit_run(c, 1, 1, method="lp++", options={"epochs": 10})  # one template: T0 is their classifier
    assert not any("per-template" in w for w in r["warnings"])


# ------------------------------------------------------------------------------------------- CLAP


def _clap_official(features, labels, base, n_images, epochs, seed, lr=0.1, batch=256):
    """AdapterMethod (INIT ZS, CONSTRAINT l2) + forward_lp + forward_backward + run_epoch, Dassl's SGD and
    ConstantWarmup(CosineAnnealingLR) scheduler, with the method's shuffles (the same generator)."""
    prototypes = torch.nn.Parameter(base.clone())
    logits_zs = features @ F.normalize(base, dim=-1).t() * 100.0  # the zero-shot logits of extract_features
    one_hot = F.one_hot(labels)
    alpha_constraint = torch.diag(torch.softmax(logits_zs, -1).t() @ one_hot.float()) / one_hot.sum(0)
    optim = torch.optim.SGD([prototypes], lr=lr, momentum=0.9, dampening=0, nesterov=False, weight_decay=0.0)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, float(epochs))
    for g in optim.param_groups:  # ConstantWarmupScheduler at epoch 0
        g["lr"] = 1e-5
    gen = torch.Generator().manual_seed(seed)
    num_batches = n_images // batch if n_images >= batch else 1
    for epoch in range(epochs):
        idx = torch.randperm(len(features), generator=gen)
        f, y = features[idx], labels[idx]
        for b in range(num_batches):
            fb, yb = f[b * batch : (b + 1) * batch], y[b * batch : (b + 1) * batch]
            output = F.normalize(fb, dim=-1) @ (prototypes / prototypes.norm(dim=-1, keepdim=True)).t() * 100.0
            loss = F.cross_entropy(output, yb)
            loss = loss + torch.mean(alpha_constraint * (prototypes - base).pow(2).sum(-1))
            optim.zero_grad()
            loss.backward()
            optim.step()
        if epoch == 0:  # warm-up over: the successor's lr
            for g in optim.param_groups:
                g["lr"] = successor.get_last_lr()[0]
        else:
            successor.step()
    return prototypes.detach(), alpha_constraint


def test_clap_is_their_loop(cache):
    data = fit_data(cache, 4, 1).select_views(["rrc-1", "rrc-2", "rrc-3"])
    base = data.text_per_template().mean(1)  # raw mean, not normalized
    m = get_method("clap")
    r = m.fit(data, m.resolve({"epochs": 12}))
    w, lam = _clap_official(data.x_train, data.y_train, base, data.num_images, 12, data.seed)
    torch.testing.assert_close(class_penalties(data.x_train, data.y_train, base), lam.float())
    torch.testing.assert_close(r.head.weight, 100.0 * F.normalize(w, dim=-1), rtol=1e-4, atol=1e-4)
    assert r.extra["class_penalties"] == pytest.approx(lam.tolist(), abs=1e-6)


def test_clap_uses_augmented_views_and_needs_per_template_text(cache, tmp_path):
    from support.synth import make_cache

    from cmm_cache.errors import CmmError

    r, _ = fit_run(cache, 4, 1, method="clap", options={"epochs": 5})
    assert r["train_views"] == ["rrc-1", "rrc-2", "rrc-3"] and any("20 augmented views" in w for w in r["warnings"])
    assert r["num_train_samples"] == 24 * 3
    c = open_cache(make_cache(tmp_path / "old.h5", C=4, d=8, shots=(1,), seeds=(1,))[0])
    with pytest.raises(CmmError, match="--add-text"):
        fit_run(c, 1, 1, method="clap", options={"epochs": 5})


def test_clap_schedule_is_dassls():
    from cmm_cache.methods.clap import lr_at_epoch

    assert lr_at_epoch(0, 0.1, 300) == 1e-5 and lr_at_epoch(1, 0.1, 300) == pytest.approx(0.1)
    assert lr_at_epoch(151, 0.1, 300) == pytest.approx(0.05) and lr_at_epoch(299, 0.1, 300) > 0
    assert lr_at_epoch(2, 0.1, 300) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 300)))
