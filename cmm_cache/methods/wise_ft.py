"""``wise-ft``: a linear probe initialized from the text classifier, weight-space ensembled with zero-shot.

Source: Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022), the linear-classifier
variant; mlfoundations/wise-ft ``src/wise_ft.py`` (commit 4639a3919b51b20beae5814bc6722b962d93ae47):
``θ_α = (1 − α)·θ_zero-shot + α·θ_fine-tuned`` for α in a list, evaluated per α.

Here the fine-tuned head is the image-only ("uni-modal") linear head of Lin et al.'s trainer
(:mod:`.linear_trainer`: zero-shot initialization, their AdamW grid, schedule and val early stopping),
the zero-shot head is the cache's text classifier T0 (both at CLIP's logit scale), and α is chosen on
the val subset from {0, 0.1, …, 1.0} (first best, i.e. the most zero-shot weight among ties).
"""

from __future__ import annotations

import time

import torch

from cmm_cache.evaluation.metrics import head_accuracy
from cmm_cache.heads.linear import LinearHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import select_on_val
from cmm_cache.methods.trainers.linear_grid import (
    LOGIT_SCALE,
    grid_configs,
    grid_defaults,
    train_grid,
)

ALPHAS = [round(0.1 * i, 1) for i in range(11)]


def wise_mix(W_ft: torch.Tensor, W_zs: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)·W_zs + α·W_ft: WiSE-FT's interpolation of two heads' weights."""
    return (1.0 - alpha) * W_zs + alpha * W_ft


def choose_alpha(W_ft, W_zs, x_val, y_val, alphas=ALPHAS) -> tuple[float, float]:
    """The mixing weight with the best val accuracy (first in `alphas` among ties), and that accuracy."""
    chosen = select_on_val(
        [float(a) for a in alphas],
        lambda a: head_accuracy(LinearHead(LOGIT_SCALE * wise_mix(W_ft, W_zs, a)), x_val, y_val),
    )
    return chosen.value, chosen.score


def train_linear(data: FitData, options: dict, W0, text_x=None, text_y=None, progress=None):
    """Lin et al.'s grid on the image samples (plus text samples if given); returns (GridResult, index chosen)."""
    n_img = len(data.x_train)
    if text_x is None:
        pool_x, pool_y, n_txt, ratio = data.x_train, data.y_train, 0, 0.0
    else:
        pool_x, pool_y = torch.cat([data.x_train, text_x]), torch.cat([data.y_train, text_y])
        n_txt, ratio = len(text_x), float(options["text_ratio"])
    grid = {"lr": options["lr"], "weight_decay": options["weight_decay"], "batch_size": options["batch_size"]}
    configs = grid_configs(n_img, n_txt, ratio, grid)
    iters = int(options["iterations"])
    r = train_grid(pool_x, pool_y, n_img, W0, data.x_val, data.y_val, configs, iters, data.seed, progress)
    return r, r.chosen()


def search_table(r) -> list[dict]:
    return [
        {"config": c.label(), "val_acc": r.best_val[k], "best_iteration": r.best_iter[k]}
        for k, c in enumerate(r.configs)
    ]


def precheck(data: FitData, options: dict) -> None:
    """No batch size of the grid fits the image samples: refused before anything trains."""
    grid = {k: options[k] for k in ("lr", "weight_decay", "batch_size")}
    grid_configs(len(data.x_train), 0, 0.0, grid)


@scoped(single_thread=True)
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    W_zs = data.T0
    r, k = train_linear(data, options, W_zs, progress=progress)
    W_ft = r.best_W[k]
    if options["alpha"] is None:
        alpha, val = choose_alpha(W_ft, W_zs, data.x_val, data.y_val, options["alphas"])
    else:
        alpha, val = choose_alpha(W_ft, W_zs, data.x_val, data.y_val, [options["alpha"]])
    c = r.configs[k]
    return MethodResult(
        head=LinearHead(LOGIT_SCALE * wise_mix(W_ft, W_zs, alpha)),
        hparams={"alpha": alpha, "lr": c.lr, "weight_decay": c.weight_decay, "batch_size": c.batch_size},
        val_acc=val,
        fit_seconds=time.perf_counter() - t0,
        iterations=r.iterations * len(r.configs),
        extra={"search": search_table(r), "fine_tuned_val_acc": r.best_val[k]},
    )


DEFAULTS = grid_defaults()

METHOD = register_method(
    Method(
        name="wise-ft",
        fit=fit,
        defaults={**DEFAULTS, "alpha": None, "alphas": list(ALPHAS)},
        summary="Linear probe from the text classifier, weight-space ensemble with zero-shot (alpha on val)",
        source="Wortsman et al. CVPR 2022, mlfoundations/wise-ft src/wise_ft.py @ 4639a39; trainer of Lin et al.",
        trained=True,
        budget="iterations",
        rank=20,
        cost=70.0,
        precheck=precheck,
    )
)
