"""Trained methods: each trainer against a plain transcription (autograd, torch.optim, their loops)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods_closed_form import problem

from cmm_cache.heads.tip_adapter import tip_logits
from cmm_cache.methods.cross_modal import text_samples
from cmm_cache.methods.linear_probe import C_START, _Path, coop_search, fit_logreg, logreg_objective
from cmm_cache.methods.prolip import prolip_loss, train_maps, view_order
from cmm_cache.methods.registry import get_method
from cmm_cache.methods.tip_adapter import cache_model, train_keys
from cmm_cache.methods.trainers.linear_grid import (
    Config,
    config_batches,
    draw,
    grid_configs,
    lr_at,
    reference_train,
    train_grid,
)
from cmm_cache.methods.wise_ft import choose_alpha, wise_mix


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- Lin et al.'s trainer


@pytest.mark.filterwarnings("ignore:Detected call of")  # the emulation steps schedulers without an optimizer
def test_lr_schedule_is_their_warmup_wrapper_around_cosine():
    """Their LinearWarmupScheduler(successor=CosineAnnealingLR(T_max=iters)): step i uses lr_i."""
    base, iters, warm = 1e-3, 300, 50
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(iters))
    last_epoch, lrs = 0, []
    for g in opt.param_groups:  # their wrapper's __init__ step: last_epoch 0 -> warmup_min
        g["lr"] = 1e-5
    for _ in range(iters):
        lrs.append(opt.param_groups[0]["lr"])
        if last_epoch >= warm:
            cosine.step()
        else:
            last_epoch += 1
            new = cosine.get_last_lr()[0] if last_epoch >= warm else base * last_epoch / warm
            for g in opt.param_groups:
                g["lr"] = new
    assert lrs == pytest.approx([lr_at(i, base, iters) for i in range(iters)], rel=1e-9, abs=1e-15)


def test_batch_sizes_follow_their_validity_filter():
    def theirs(batch_sizes, n_text, n_image, ratio):
        out = []
        for bs in batch_sizes:
            t = int(bs * ratio)
            if t == 0 or t < n_text:
                if bs - t == 0 or bs - t < n_image:
                    out.append(bs)
        return out

    for n_img, n_txt, ratio in [(10, 5, 0.5), (94, 329, 0.5), (10, 0, 0.0), (40, 20, 0.5)]:
        got = sorted({c.batch_size for c in grid_configs(n_img, n_txt, ratio)})
        assert got == theirs([8, 32], n_txt, n_img, ratio)
    cs = grid_configs(100, 100, 0.5)
    assert [(c.lr, c.weight_decay, c.batch_size) for c in cs][:3] == [(1e-3, 0.0, 8), (1e-3, 0.0, 32), (1e-3, 1e-2, 8)]
    assert cs[0].text_batch == 4 and cs[1].image_batch == 16


def test_draw_is_a_shuffled_pass_without_the_remainder():
    rows = draw(10, 3, 7, torch.Generator().manual_seed(0))  # 3 batches per epoch, 1 item dropped each pass
    for e in range(2):
        epoch = rows[3 * e : 3 * e + 3].flatten()
        assert len(set(epoch.tolist())) == 9
    assert rows.shape == (7, 3)


def _pool(data):
    tx, ty, W_zs = text_samples(data)
    return torch.cat([data.x_train, tx]), torch.cat([data.y_train, ty]), len(data.x_train), W_zs


def test_batched_grid_equals_plain_adamw_per_config():
    data = problem(C=4, d=10, shots=4)
    pool_x, pool_y, n_img, W0 = _pool(data)
    configs = [Config(1e-3, 0.0, 8, 4), Config(1e-4, 1e-2, 8, 4), Config(1e-3, 1e-4, 6, 3), Config(1e-3, 0.0, 4, 0)]
    iters = 70  # through the warm-up into the cosine
    r = train_grid(pool_x, pool_y, n_img, W0, data.x_val, data.y_val, configs, iters, seed=3)
    batches = config_batches(configs, n_img, len(pool_x) - n_img, iters, seed=3)
    for k, c in enumerate(configs):
        want = reference_train(pool_x, pool_y, W0, c, batches[k], iters)
        torch.testing.assert_close(r.final_W[k], want, rtol=1e-5, atol=1e-6)
        b = batches[k]
        assert (b[:, : c.image_batch] < n_img).all() and (b[:, c.image_batch :] >= n_img).all()
    for k in range(len(configs)):  # early stopping: the kept head is the one val scored at a checkpoint
        assert r.best_iter[k] % 100 == 0
        acc = 100.0 * float(((data.x_val @ r.best_W[k].t()).argmax(1) == data.y_val).float().mean())
        assert acc == pytest.approx(r.best_val[k])
    assert r.chosen() == max(range(len(configs)), key=lambda k: (r.best_val[k], -k))


def test_cross_modal_text_samples_and_init_are_theirs():
    data = problem()
    tx, ty, W_zs = text_samples(data)
    per = torch.from_numpy(data._per_template())
    assert tx.shape == (5 * 3, 12) and torch.equal(ty, torch.arange(5).repeat_interleave(3))
    weights, count = torch.zeros(5, 12), torch.zeros(5)  # their get_zero_shot_weights
    for i in range(len(tx)):
        weights[ty[i]] += F.normalize(per.reshape(-1, 12)[i], dim=0)
        count[ty[i]] += 1
    torch.testing.assert_close(W_zs, F.normalize(weights / count[:, None], dim=1))


def test_wise_ft_mixing_and_first_best_alpha():
    W_ft, W_zs = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(wise_mix(W_ft, W_zs, 0.3), 0.7 * W_zs + 0.3 * W_ft)
    x = F.normalize(torch.randn(6, 4), dim=1)
    y = (x @ W_zs.t()).argmax(1)  # zero-shot is perfect: alpha 0 first wins every tie
    assert choose_alpha(W_ft, W_zs, x, y)[0] == 0.0
    r = get_method("cross-modal-wise-ft").fit(problem(), get_method("cross-modal-wise-ft").resolve({"iterations": 30}))
    assert r.hparams["ratio"] == 0.5


# ----------------------------------------------------------------------------- ProLIP


def test_prolip_view_cycling_is_their_cnt_loop():
    for V in (1, 2, 3):
        cnt, want = 0, []
        for _ in range(7):
            if (cnt + 1) % V == 0:
                cnt = 0
            else:
                cnt += 1
            want.append(cnt)
        assert view_order(7, V) == want


def test_prolip_maps_equal_torch_adam_with_cosine_per_config():
    data = problem(C=4, d=8, shots=3)
    views = data.x_train.view(-1, 2, 8).transpose(0, 1)
    y = data.y_train.view(-1, 2)[:, 0]
    lrs, lams, epochs = [1e-2, 1e-3], [0.5, 0.0], 12
    got = train_maps(views, y, data.T0, lrs, lams, epochs)
    for k, (lr, lam) in enumerate(zip(lrs, lams)):
        W = torch.nn.Parameter(torch.eye(8))
        opt = torch.optim.Adam([W], lr=lr, eps=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        mse = torch.nn.MSELoss(reduction="sum")
        for v in view_order(epochs, 2):
            feats = F.normalize(views[v] @ W.t(), dim=-1)
            loss = F.cross_entropy(100.0 * feats @ data.T0.t(), y) + lam * mse(torch.eye(8).view(-1), W.view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        torch.testing.assert_close(got[k], W.detach(), rtol=1e-5, atol=1e-6)
    Ws = torch.stack([torch.eye(8), 1.1 * torch.eye(8)])
    per = [prolip_loss(W, views[0], y, data.T0, lam) for W, lam in zip(Ws, [0.5, 0.0])]
    torch.testing.assert_close(prolip_loss(Ws, views[0], y, data.T0, [0.5, 0.0]), per[0] + per[1])


def test_prolip_lambda_is_one_over_shots_and_lr_on_val():
    data = problem(shots=4)
    m = get_method("prolip-linear")
    r = m.fit(data, m.resolve({"epochs": 20, "lrs": [1e-2, 1e-4]}))
    assert r.hparams["lambda"] == 0.25 and r.hparams["lr"] in (1e-2, 1e-4)


# ----------------------------------------------------------------------------- Tip-Adapter-F


def test_tip_f_loss_gradient_and_val_epoch_choice():
    data = problem(C=3, shots=2, spread=1.5)
    keys, labels = cache_model(data)
    values = F.one_hot(labels).double()
    K = keys.double().clone().requires_grad_(True)
    x, T0 = data.x_train[:5].double(), data.T0.double()
    assert torch.autograd.gradcheck(lambda k: tip_logits(x, k, values, T0, 1.17, 1.0), (K,))
    best, best_epoch, history, steps = train_keys(data, keys, values.float(), 1.17, 1.0, 6, 1e-3, 8)
    assert steps == 6 * math.ceil(len(data.x_train) / 8) and len(history) == 6
    first_max = int(np.argmax(history)) if max(history) > 0 else -1
    assert best_epoch == first_max
    if best_epoch >= 0:
        acc = 100.0 * float(
            (tip_logits(data.x_val, best, values.float(), data.T0, 1.17, 1.0).argmax(1) == data.y_val).float().mean()
        )
        assert acc == pytest.approx(history[best_epoch])
    capped = train_keys(data, keys, values.float(), 1.17, 1.0, 6, 1e-3, 8, max_steps=5)
    assert capped[3] == 5


# ----------------------------------------------------------------------------- linear probe


def test_logreg_reaches_the_scikit_learn_optimum():
    data = problem(C=4, d=10, shots=5, spread=2.0)
    x, y = data.x_train, data.y_train
    W, b, _ = fit_logreg(x, y, 4, C=1.0, tol=1e-6)
    x64 = x.double()

    def objective(flat):
        th = flat.view(4, 11)
        return logreg_objective(x64, y, th[:, :10], th[:, 10], 1.0)

    th = torch.cat([W, b[:, None]], 1).double().flatten()
    (g,) = torch.autograd.grad(objective(th.requires_grad_(True)), th)
    assert float(g.abs().max()) < 1e-4  # a stationary point of the scikit-learn objective
    ref = torch.zeros(44, dtype=torch.float64)  # the reference: plain Newton steps from zero, float64
    for _ in range(30):
        r = ref.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(r), r)
        H = torch.autograd.functional.hessian(objective, ref)
        ref = ref - torch.linalg.lstsq(H, grad[:, None]).solution[:, 0]  # the bias direction is flat: lstsq
    torch.testing.assert_close(objective(th.detach()), objective(ref), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(th.detach().view(4, 11)[:, :10], ref.view(4, 11)[:, :10], rtol=1e-3, atol=1e-3)


def test_span_basis_gives_the_same_classifier():
    data = problem(C=3, d=40, shots=2)  # 12 samples < 40 dimensions
    p = _Path(data.x_train, data.y_train, data.x_val, data.y_val, 3, 1000, 1e-6)
    assert p.Q is not None
    p.val_acc(0.0)
    W_full, b_full, _ = fit_logreg(data.x_train, data.y_train, 3, C=1.0, tol=1e-6)
    head = p.head(0.0)
    torch.testing.assert_close(head.weight, W_full, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(head.bias, b_full, rtol=1e-3, atol=1e-3)


def test_c_search_is_coops_initial_sweep_then_binary_search():
    def acc_of(c):  # a made-up val curve with ties, peaked near c = 3
        return round(50 - 4 * abs(math.log10(c) - 0.5), 0)

    # KaiyangZhou/CoOp lpclip/linear_probe.py, with the fit replaced by acc_of
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [acc_of(c) for c in search_list]
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(8):
        acc_left, acc_right = acc_of(c_left), acc_of(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    log_c, tried = coop_search(lambda lc: acc_of(10.0**lc), C_START, 8)
    assert 10.0**log_c == pytest.approx(c_final) and len(tried) == 7 + 16
