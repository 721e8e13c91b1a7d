"""The linear-head trainer of cross-modal adaptation (Lin et al., CVPR 2023), every config of its grid at once.

Source: linzhiqiu/cross_modal_adaptation — ``train.py`` (commit 064bb9834e29612e2ee149681da934e48a262288),
``engine/optimizer/default.py`` (064bb98), ``engine/optimizer/scheduler.py`` (c7e7e68),
``engine/model/logit.py`` (3f848e0), ``engine/model/head.py`` (064bb98). Their "linear" recipe:

* head: ``logits = exp(4.60517) · normalize(x) Wᵀ`` (no bias), W [C, d] initialized from text;
* batch: half text, half image (``text = int(0.5·bs)``, ``image = bs − text``; uni-modal: all image),
  each side an epoch-wise shuffled loader with ``drop_last=True`` restarted when exhausted; one
  cross-entropy over the concatenated batch;
* AdamW (betas 0.9/0.999, eps 1e-8), lr ∈ {1e-3, 1e-4} × weight decay ∈ {0, 1e-2, 1e-4} × batch
  ∈ {8, 32} (a batch size is dropped when a side's share is not smaller than its data set), 12,800
  iterations; lr schedule: step 0 at 1e-5, steps 1..49 at lr·i/50, then lr·½(1 + cos(π(i − 50)/12800))
  (their warm-up wrapper around ``CosineAnnealingLR(T_max=iters)``, which this closed form equals);
* early stopping: val accuracy after steps 0, 100, 200, …; each config keeps its best (strictly
  better) head; the config with the best val accuracy wins (first in their loop order lr → wd → bs).

Here all configs train together: per batch size one ``bmm`` computes every config's logits and the
hand-derived gradient ``(100/B)·(softmax − onehot)ᵀ x̂``, and one fused AdamW kernel per (lr, wd)
updates the heads. :func:`reference_train` is the plain ``nn.Linear`` + ``torch.optim.AdamW``
transcription the tests hold it to. The sampling streams are our own (seeded per config), not
their global RNG's. Schedule and grid are theirs unchanged (a run at 47 classes × 1024-d trains the
12 configs in ~22 s on one CPU thread); ``iterations`` can be lowered for smoke tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmm_cache.errors import CmmError
from cmm_cache.methods.search import improves, select_scored
from cmm_cache.methods.trainers.ops import AdamW

LOGIT_SCALE = math.exp(4.60517)  # their LogitHead: CLIP's initial temperature, not learned
GRID = {"lr": [1e-3, 1e-4], "weight_decay": [0.0, 1e-2, 1e-4], "batch_size": [8, 32]}
ITERATIONS, WARMUP, WARMUP_MIN_LR, EVAL_EVERY, TEXT_RATIO = 12800, 50, 1e-5, 100, 0.5


@dataclass(frozen=True)
class Config:
    lr: float
    weight_decay: float
    batch_size: int
    text_batch: int  # text samples per batch (0: uni-modal)

    @property
    def image_batch(self) -> int:
        return self.batch_size - self.text_batch

    def label(self) -> str:
        return f"lr_{self.lr:g}-wd_{self.weight_decay:g}-bs_{self.batch_size}"


def lr_at(i: int, base: float, iterations: int, warmup: int = WARMUP, warmup_min: float = WARMUP_MIN_LR) -> float:
    """Learning rate of optimizer step i (0-based) under their warm-up + cosine schedule."""
    if i < warmup:
        return warmup_min if i == 0 else base * i / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (i - warmup) / iterations))


def grid_defaults(grid: dict = GRID, **extra) -> dict:
    """A method's default hyperparameters: its search grid (fresh lists, so a caller's edits stay its own), the
    step budget and any method-specific settings."""
    return {**{k: list(grid[k]) for k in ("lr", "weight_decay", "batch_size")}, "iterations": ITERATIONS, **extra}


def grid_configs(n_image: int, n_text: int, text_ratio: float, grid: dict = GRID) -> list[Config]:
    """Their sweep in their loop order, without the batch sizes their valid-batch filter drops."""
    sizes = []
    for bs in grid["batch_size"]:
        t = int(bs * text_ratio)
        if (t == 0 or t < n_text) and (bs - t == 0 or bs - t < n_image):
            sizes.append((bs, t))
    if not sizes:
        raise CmmError(
            f"No batch size of {grid['batch_size']} fits {n_image} image and {n_text} text samples.",
            "Use more shots, or pass a smaller batch_size list.",
        )
    return [Config(lr, wd, bs, t) for lr in grid["lr"] for wd in grid["weight_decay"] for bs, t in sizes]


def draw(n: int, batch: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """[iterations, batch] indices: a shuffled pass over n items, remainder dropped, restarted (drop_last)."""
    if batch == 0:
        return torch.zeros(iterations, 0, dtype=torch.long)
    per_epoch = n // batch
    epochs = -(-iterations // per_epoch)
    rows = [torch.randperm(n, generator=generator)[: per_epoch * batch].view(per_epoch, batch) for _ in range(epochs)]
    return torch.cat(rows)[:iterations]


def config_batches(configs, n_image: int, n_text: int, iterations: int, seed: int) -> list[torch.Tensor]:
    """Per config [iterations, bs] rows into the pool cat(image samples, text samples); one stream per config."""
    out = []
    for k, c in enumerate(configs):
        g = torch.Generator().manual_seed(int(seed) * 1000 + k)
        img = draw(n_image, c.image_batch, iterations, g)
        txt = draw(n_text, c.text_batch, iterations, g) + n_image
        out.append(torch.cat([img, txt], 1))
    return out


@dataclass
class GridResult:
    configs: list[Config]
    best_W: torch.Tensor  # [K, C, d] each config's best-val head (unscaled)
    best_val: list[float]  # val accuracy (%) of each
    best_iter: list[int]
    final_W: torch.Tensor  # [K, C, d] after the last step
    seconds: float
    iterations: int  # optimizer steps per config

    def chosen(self) -> int:
        """Index of the winning config: best val, first in loop order."""
        return select_scored(range(len(self.configs)), self.best_val).value


def _val_acc(W: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor) -> torch.Tensor:
    pred = torch.einsum("nd,kcd->knc", x_val, W).argmax(2)
    return 100.0 * (pred == y_val[None]).sum(1).double() / max(len(y_val), 1)


def train_grid(pool_x, pool_y, n_image, W0, x_val, y_val, configs, iterations, seed, progress=None) -> GridResult:
    """Train every config from W0 on the sample pool (normalized; image rows first, then text rows)."""
    t0 = time.perf_counter()
    batches = config_batches(configs, n_image, len(pool_x) - n_image, iterations, seed)
    # Configs of one batch size sit next to each other, so each group's heads are one slice of W.
    order = sorted(range(len(configs)), key=lambda k: (configs[k].batch_size, k))
    groups = []  # (start, stop, batch size, [iterations, group size, bs] indices)
    for bs in dict.fromkeys(configs[k].batch_size for k in order):
        pos = [j for j, k in enumerate(order) if configs[k].batch_size == bs]
        rows = torch.stack([batches[order[j]] for j in pos], 1).to(pool_x.device)
        groups.append((pos[0], pos[-1] + 1, bs, rows))
    by_opt: dict[tuple, list[int]] = {}
    for j, k in enumerate(order):
        by_opt.setdefault((configs[k].lr, configs[k].weight_decay), []).append(j)
    W = W0[None].repeat(len(configs), 1, 1).contiguous()
    grad = torch.zeros_like(W)
    # One AdamW per (lr, weight decay) over views of W: the fused kernel when torch has it (probed, with
    # public fallbacks: cmm_cache.methods.trainers.ops), so no private op is called unguarded.
    opts = {key: (AdamW([W[j] for j in js], weight_decay=key[1]), js) for key, js in by_opt.items()}
    best_W, best_val = W.clone(), torch.full((len(configs),), -1.0, dtype=torch.float64)
    best_iter = torch.zeros(len(configs), dtype=torch.long)
    with torch.no_grad():
        for i in range(iterations):
            for a, z, bs, rows in groups:
                b = rows[i]
                X = pool_x.index_select(0, b.flatten()).view(*b.shape, -1)  # 3x faster than pool_x[b]
                p = torch.softmax(LOGIT_SCALE * torch.bmm(X, W[a:z].transpose(1, 2)), 2)
                p.scatter_add_(2, pool_y[b][..., None], torch.full_like(p[..., :1], -1.0))
                torch.bmm(p.transpose(1, 2), X, out=grad[a:z]).mul_(LOGIT_SCALE / bs)
            for (lr, _wd), (opt, js) in opts.items():
                opt.step([grad[j] for j in js], lr_at(i, lr, iterations))
            if i % EVAL_EVERY == 0:
                acc = _val_acc(W, x_val, y_val).cpu()
                better = improves(acc, best_val)  # the shared rule, elementwise (start -1: the first eval counts)
                best_W[better] = W[better]
                best_val = torch.where(better, acc, best_val)
                best_iter[better] = i
                if progress is not None:
                    progress(i + 1, iterations, None)
    back = torch.tensor(order).argsort()  # grouped position -> config order
    return GridResult(
        configs,
        best_W[back],
        best_val[back].tolist(),
        best_iter[back].tolist(),
        W[back],
        time.perf_counter() - t0,
        iterations,
    )


def reference_train(pool_x, pool_y, W0, config: Config, batches: torch.Tensor, iterations: int) -> torch.Tensor:
    """Plain transcription of one config (nn.Linear, torch.optim.AdamW, F.cross_entropy): the final W."""
    head = torch.nn.Linear(W0.shape[1], W0.shape[0], bias=False)
    head.weight.data = W0.clone()
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    for i in range(iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(i, config.lr, iterations)
        b = batches[i]
        logits = head(F.normalize(pool_x[b], dim=1)) * LOGIT_SCALE
        loss = F.cross_entropy(logits, pool_y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.weight.detach()
