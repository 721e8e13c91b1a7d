"""``cross-modal-adapter``: Lin et al.'s cross-modal adapter (CVPR 2023) on cached image features.

Source: linzhiqiu/cross_modal_adaptation — ``adapter.sh`` and ``train.py`` (commit
39335d95c089a282ef648e637dea992548dfa330), ``engine/model/head.py`` (39335d9: ``Adapter``,
``make_classifier_head``, ``get_zero_shot_weights``), ``engine/model/logit.py`` (c7e7e68),
``engine/optimizer/default.py`` (064bb98: the ``adapter`` grid). Their run (``--classifier_head adapter
--classifier_init zeroshot --logit 4.60517 --hyperparams adapter``, image layer 0 = final features):

* head: CLIP-Adapter's residual MLP then a linear head on the normalized feature,
  ``exp(4.60517) · (0.2·ReLU(W₂ ReLU(W₁ x)) + 0.8·x) Wᵀ`` (:class:`cmm_cache.heads.adapter.AdapterHead`),
  W₁ [d/4, d] and W₂ [d, d/4] without biases at PyTorch's default init (U(±1/√fan_in), here from a seeded
  generator per config), W from their zero-shot weights ``normalize(mean_m e_{c,m})`` (the cache's T0);
* the whole head sees the cross-modal batch: 4 image samples (centre and mirror views, each a sample) and
  4 raw per-template text embeddings (normalized at the head's input) per step of batch 8;
* AdamW over W₁, W₂ and W, grid lr {1e-4, 1e-5, 1e-6, 1e-7} × weight decay {0, 1e-3, 1e-5}, 12,800
  iterations, their warm-up + cosine schedule, val accuracy every 100 iterations with the best state kept,
  the config with the best val accuracy chosen — the loop of
  :mod:`cmm_cache.methods.trainers.cross_modal_loop`, run here for every config at once (stacked weights,
  one batched step; each config keeps its own batches, AdamW moments, lr and weight decay, so it trains as
  it would alone — a test holds it to that loop config by config).

They also report a WiSE-FT mix of the final linear layer (``head_wiseft_0.5``); this method reports the
adapter head itself.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.heads.adapter import AdapterHead, adapter_logits
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import improves, select_scored
from cmm_cache.methods.trainers.linear_grid import (
    EVAL_EVERY,
    TEXT_RATIO,
    config_batches,
    grid_configs,
    grid_defaults,
    lr_at,
)
from cmm_cache.methods.trainers.ops import AdamW

LOGIT = 4.60517
RATIO, REDUCTION = 0.2, 4
GRID = {"lr": [1e-4, 1e-5, 1e-6, 1e-7], "weight_decay": [0.0, 1e-3, 1e-5], "batch_size": [8]}


def init_adapter(d: int, seed: int, reduction: int = REDUCTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(W₁ [d/r, d], W₂ [d, d/r]): ``nn.Linear``'s default init (Kaiming-uniform, a = √5: U(±1/√fan_in))."""
    g = torch.Generator().manual_seed(int(seed))
    h = d // reduction
    W1 = (torch.rand(h, d, generator=g) * 2.0 - 1.0) / math.sqrt(d)
    W2 = (torch.rand(d, h, generator=g) * 2.0 - 1.0) / math.sqrt(h)
    return W1, W2


def config_seed(seed: int, k: int) -> int:
    return int(seed) * 1000 + 500 + int(k)


def train_adapters(pool, pool_y, n_image, W0, x_val, y_val, configs, iterations, seed, scale, progress=None):
    """Every config's adapter head trained together (see the module docstring); returns
    (best W1 [K,h,d], best W2 [K,d,h], best W [K,C,d], best val accuracies, best iterations).

    `pool` holds the normalized image samples then the text samples (normalized here)."""
    K, d, dev = len(configs), W0.shape[1], W0.device
    pool = F.normalize(pool.float(), dim=1)
    batches = torch.stack(config_batches(configs, n_image, len(pool) - n_image, iterations, seed), 1).to(dev)
    inits = [init_adapter(d, config_seed(seed, k)) for k in range(K)]
    params = [
        torch.stack([w1 for w1, _ in inits]).to(dev).requires_grad_(True),
        torch.stack([w2 for _, w2 in inits]).to(dev).requires_grad_(True),
        W0.float()[None].repeat(K, 1, 1).contiguous().requires_grad_(True),
    ]
    # One AdamW per config over its slices of the stacked tensors (the fused kernel where torch has one:
    # cmm_cache.methods.trainers.ops), each with its own moments, lr and weight decay.
    opts = [AdamW([p.detach()[k] for p in params], weight_decay=c.weight_decay) for k, c in enumerate(configs)]
    best = [p.detach().clone() for p in params]
    best_val = torch.full((K,), -1.0, dtype=torch.float64)
    best_iter = torch.zeros(K, dtype=torch.long)
    for i in range(iterations):
        idx = batches[i]  # [K, bs]
        with torch.enable_grad():
            z = adapter_logits(pool[idx], *params, RATIO, scale)  # [K, bs, C]
            ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), pool_y[idx].reshape(-1), reduction="none")
            loss = ce.view(K, -1).mean(1).sum()  # each config's own mean loss: independent gradients
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for k, (c, opt) in enumerate(zip(configs, opts)):
                opt.step([g[k] for g in grads], lr_at(i, c.lr, iterations))
        if i % EVAL_EVERY == 0:
            with torch.no_grad():
                pred = adapter_logits(x_val[None], *params, RATIO, scale).argmax(-1)  # [K, n_val]
                acc = (100.0 * (pred == y_val[None]).sum(1).double() / max(1, len(y_val))).cpu()
            better = improves(acc, best_val)
            for p, bp in zip(params, best):
                bp[better.to(dev)] = p.detach()[better.to(dev)]
            best_val = torch.where(better, acc, best_val)
            best_iter[better] = i
            if progress is not None:
                progress(i + 1, iterations, float(loss.detach()) / K)
    return (*best, best_val.tolist(), best_iter.tolist())


@scoped(single_thread=True)
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    e = data.text_per_template().float()
    C, M, d = e.shape
    text_x, text_y = e.reshape(C * M, d), torch.arange(C, device=e.device).repeat_interleave(M)
    grid = {"lr": options["lr"], "weight_decay": options["weight_decay"], "batch_size": options["batch_size"]}
    configs = grid_configs(len(data.x_train), len(text_x), float(options["text_ratio"]), grid)
    scale = math.exp(float(options["logit"]))
    pool, pool_y = torch.cat([data.x_train, text_x]), torch.cat([data.y_train, text_y])
    iters = int(options["iterations"])
    heads, vals, its = [None] * len(configs), [0.0] * len(configs), [0] * len(configs)
    for bs in dict.fromkeys(c.batch_size for c in configs):  # stacked configs share one batch shape
        ks = [j for j, c in enumerate(configs) if c.batch_size == bs]
        W1, W2, W, v, it = train_adapters(
            pool, pool_y, len(data.x_train), data.T0, data.x_val, data.y_val, [configs[j] for j in ks], iters,
            data.seed + 7919 * ks[0], scale, progress,
        )  # fmt: skip
        for n, j in enumerate(ks):
            heads[j], vals[j], its[j] = (W1[n], W2[n], W[n]), v[n], it[n]
    k = select_scored(range(len(configs)), vals).value
    c = configs[k]
    return MethodResult(
        head=AdapterHead(*heads[k], RATIO, scale),
        hparams={"lr": c.lr, "weight_decay": c.weight_decay, "batch_size": c.batch_size},
        val_acc=vals[k],
        fit_seconds=time.perf_counter() - t0,
        iterations=iters * len(configs),
        extra={
            "search": [
                {"config": cc.label(), "val_acc": vals[j], "best_iteration": its[j]} for j, cc in enumerate(configs)
            ],
            "text_samples": int(len(text_x)),
        },
    )


METHOD = register_method(
    Method(
        name="cross-modal-adapter",
        fit=fit,
        defaults=grid_defaults(GRID, text_ratio=TEXT_RATIO, logit=LOGIT),
        summary="CLIP-Adapter residual MLP + linear head from text, trained on image features and each "
        "template's text embedding",
        source="Lin et al. CVPR 2023, linzhiqiu/cross_modal_adaptation adapter.sh + engine/model/head.py @ 39335d9",
        trained=True,
        budget="iterations",
        rank=33,
        selection="few-shot val (lr, weight decay, best iteration), as theirs",
    )
)
