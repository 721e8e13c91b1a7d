"""``cmm``: Cross-Modal Mapping (Yang et al.), the project's own method.

Training is :func:`cmm_cache.methods.trainers.cmm.trainer.train_cmm` (the paper's §3 equations,
hand-derived backward, checked against an autograd transcription); alpha is then chosen on the val
subset from {0.1, …, 2.0} (paper §4.1) through the shared search rule (:mod:`cmm_cache.methods.search`:
grid order, strictly better wins, so ties go to the smallest alpha). The options are the fields of
:class:`~cmm_cache.methods.trainers.cmm.trainer.TrainConfig` (``use_map=False``, ``triplet=False``,
``cmm_only=True`` are the paper's ablations), ``alpha`` (a fixed alpha instead of the val search) and
``threads`` (a runtime option: it never changes the numbers).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from cmm_cache.evaluation.metrics import accuracy
from cmm_cache.heads.cmm import CMMHead, Model, fuse, logits
from cmm_cache.methods.base import FitData, Method, MethodResult
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import select_on_val
from cmm_cache.methods.trainers.cmm.trainer import Runtime, TrainConfig, train_cmm

ALPHA_GRID = [round(0.1 * i, 1) for i in range(1, 21)]  # 0.1, 0.2, ..., 2.0 (paper §4.1)
# Execution details, not part of what a run *is* (they do not change its numbers by design).
RUNTIME_OPTIONS = ("threads",)
DEFAULTS = {**asdict(TrainConfig()), "alpha": None, "threads": None}


def select_alpha(
    model: Model, x_val: torch.Tensor, y_val: torch.Tensor, grid=ALPHA_GRID, fixed: float | None = None
) -> tuple[float | None, float]:
    """Alpha with the best val accuracy (the shared rule: ties go to the first, i.e. smallest), and that accuracy.

    Only val features and labels come in. With `fixed` the grid is that one value; a CMM-only model has
    no alpha (None) and is scored on its own logits.
    """
    with torch.no_grad():
        cmm, clip = logits(model, x_val)
        if model.cmm_only:
            return None, accuracy(cmm, y_val)
        chosen = select_on_val(
            [float(a) for a in ([fixed] if fixed is not None else grid)],
            lambda a: accuracy(fuse(cmm, clip, a, model.fusion), y_val),
        )
    return chosen.value, chosen.score


def precheck(data: FitData, options: dict) -> None:
    """Options the trainer would refuse (unknown fusion, zero iterations, ...), refused before anything trains."""
    TrainConfig(**{k: v for k, v in options.items() if k not in ("alpha", "threads")}).validate()


def fit_cmm(data: FitData, options: dict, progress=None) -> MethodResult:
    train = {k: v for k, v in options.items() if k not in ("alpha", "threads")}
    cfg = TrainConfig(**train)
    log_every = max(cfg.iterations // 100, 1)
    cb = None if progress is None else (lambda t, loss: progress(t, cfg.iterations, loss))
    r = train_cmm(
        data.x_train,
        data.y_train,
        data.T0,
        cfg,
        seed=data.seed,
        runtime=Runtime(threads=options.get("threads")),
        progress=cb,
        log_every=log_every,
    )
    model = Model(r.W, r.T, data.T0, cfg.normalize_T_in_s, cfg.fusion, cfg.cmm_only)
    alpha, val_acc = select_alpha(model, data.x_val, data.y_val, fixed=options.get("alpha"))  # val only
    return MethodResult(
        head=CMMHead(model, alpha),
        hparams={"alpha": alpha},
        val_acc=val_acc,
        fit_seconds=r.seconds,
        iterations=r.iterations,
        extra={
            "final_loss": r.losses[-1][1] if r.losses else None,
            "engine": r.engine,
            **({"engine_note": r.engine_note} if r.engine_note else {}),
            "threads": r.threads,
        },
    )


METHOD = register_method(
    Method(
        name="cmm",
        fit=fit_cmm,
        defaults=DEFAULTS,
        summary="Cross-Modal Mapping: residual map W + tuned prototypes T, CE + triplet, fused with zero-shot",
        source="Yang et al., Cross-Modal Mapping: Eliminating the Modality Gap for Few-Shot Image Classification",
        trained=True,
        runtime_options=RUNTIME_OPTIONS,
        budget="iterations",
        rank=90,
        selection="few-shot val (alpha)",
        cost=50.0,
        precheck=precheck,
    )
)
