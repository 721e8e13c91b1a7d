"""``cross-modal-lp`` and ``cross-modal-wise-ft``: cross-modal linear probing (Lin et al., CVPR 2023).

Source: Lin, Yu, Wang, Ramanan, "Multimodality Helps Unimodality: Cross-Modal Few-Shot Learning with
Multimodal Models"; linzhiqiu/cross_modal_adaptation — ``train.py`` (commit
064bb9834e29612e2ee149681da934e48a262288: ``get_wiseft``, ``get_eval_heads``, the sweep),
``engine/model/head.py`` (064bb98: ``get_zero_shot_weights``), ``eval.py`` (738c978: the val-based
choice among the sweep, ``head_wiseft_0.5``).

* Every template's text embedding of class c is one more training sample labelled c (the text
  "shots"); each batch is half text, half image (see :mod:`.linear_trainer` for the recipe, the
  grid and the early stopping, all theirs).
* The head starts at their zero-shot weights: per class the mean of the *normalized* template
  embeddings, normalized again (so these methods need the cache's per-template embeddings).
* ``cross-modal-wise-ft``: the trained head mixed with those zero-shot weights,
  ``(1 − r)·W + r·W_zs``, at their fixed r = 0.5 (``ratio=None`` chooses r on val instead,
  as ``wise-ft`` does).
* Both train the same grid (:data:`GRID_FIT`): fitted on one subset with the same grid options, it is trained
  once and the second method reuses it (:meth:`~cmm_cache.methods.base.FitData.shared`; as in their code,
  where WiSE-FT is evaluated on the heads the linear-probe sweep saved).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from cmm_cache.heads.linear import LinearHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.trainers.linear_grid import LOGIT_SCALE, TEXT_RATIO, grid_configs
from cmm_cache.methods.wise_ft import ALPHAS, DEFAULTS, choose_alpha, search_table, train_linear, wise_mix


def text_samples(data: FitData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalized per-template embeddings [C·M, d], their labels, their zero-shot weights [C, d])."""
    e = F.normalize(data.text_per_template().float(), dim=-1)  # [C, M, d]
    C, M, d = e.shape
    W_zs = F.normalize(e.mean(1), dim=-1)
    y = torch.arange(C, device=e.device).repeat_interleave(M)
    return e.reshape(C * M, d), y, W_zs


GRID_FIT = "cross-modal-linear-grid"  # the name under which both methods share the trained grid
GRID_OPTIONS = ("lr", "weight_decay", "batch_size", "iterations", "text_ratio")  # what the grid depends on


def train_grid_once(data: FitData, options: dict, progress=None):
    """(grid result, index chosen on val, zero-shot weights W_zs, number of text samples): Lin et al.'s grid on
    image + per-template text samples from their zero-shot head, computed once per subset and grid options."""

    def compute():
        tx, ty, W_zs = text_samples(data)
        r, k = train_linear(data, options, W_zs, tx, ty, progress)
        return r, k, W_zs, int(len(tx))

    depends = {k: options[k] for k in GRID_OPTIONS} | {"init": "per-template zero-shot", "templates": data.templates}
    return data.shared(GRID_FIT, depends, compute)


def precheck(data: FitData, options: dict) -> None:
    """Refuse before training what their batch-size filter would refuse after it started: no batch size fits."""
    n_text = data.num_classes * max(len(data.templates), 1)
    grid = {k: options[k] for k in ("lr", "weight_decay", "batch_size")}
    grid_configs(len(data.x_train), n_text, float(options["text_ratio"]), grid)


def _fit(data: FitData, options: dict, progress, wise: bool) -> MethodResult:
    t0 = time.perf_counter()
    r, k, W_zs, n_text = train_grid_once(data, options, progress)
    W, c = r.best_W[k], r.configs[k]
    hparams = {"lr": c.lr, "weight_decay": c.weight_decay, "batch_size": c.batch_size}
    val = r.best_val[k]
    if wise:
        grid = options["alphas"] if options["ratio"] is None else [1.0 - float(options["ratio"])]
        alpha, val = choose_alpha(W, W_zs, data.x_val, data.y_val, grid)  # alpha = weight of the trained head
        W = wise_mix(W, W_zs, alpha)
        hparams["ratio"] = round(1.0 - alpha, 6)
    return MethodResult(
        head=LinearHead(LOGIT_SCALE * W),
        hparams=hparams,
        val_acc=val,
        fit_seconds=time.perf_counter() - t0,
        iterations=r.iterations * len(r.configs),
        extra={"search": search_table(r), "text_samples": n_text},
    )


@scoped(single_thread=True)
def fit_lp(data, options, progress=None):
    return _fit(data, options, progress, wise=False)


@scoped(single_thread=True)
def fit_wise(data, options, progress=None):
    return _fit(data, options, progress, wise=True)


SOURCE = "Lin et al. CVPR 2023, linzhiqiu/cross_modal_adaptation train.py @ 064bb98"

LP = register_method(
    Method(
        name="cross-modal-lp",
        fit=fit_lp,
        defaults={**DEFAULTS, "text_ratio": TEXT_RATIO},
        summary="Linear head from text, trained on image features and each template's text embedding",
        source=SOURCE,
        trained=True,
        budget="iterations",
        rank=30,
        needs=("per_template_text",),
        shares=(GRID_FIT,),
        cost=65.0,
        precheck=precheck,
    )
)

WISE = register_method(
    Method(
        name="cross-modal-wise-ft",
        fit=fit_wise,
        defaults={**DEFAULTS, "text_ratio": TEXT_RATIO, "ratio": 0.5, "alphas": list(ALPHAS)},
        summary="Cross-modal linear probe, weight-space ensembled with its zero-shot head (ratio 0.5)",
        source=SOURCE + " (get_wiseft)",
        trained=True,
        budget="iterations",
        rank=31,
        selection="few-shot val (head); mixing ratio fixed at 0.5",
        needs=("per_template_text",),
        shares=(GRID_FIT,),
        cost=65.0,  # the same grid (free when cross-modal-lp of the same subset trained it)
        precheck=precheck,
    )
)
