"""``cmm``: Cross-Modal Mapping (Yang et al.), the project's own method, and its ablations.

Training is :func:`cmm_cache.fit.fit` (the paper's §3 equations, hand-derived
backward, checked against an autograd transcription); alpha is then chosen on
the val subset (:func:`cmm_cache.evaluate.select_alpha`). The options are the
fields of :class:`~cmm_cache.fit.FitConfig` (``use_map=False``, ``triplet=False``,
``cmm_only=True``, ``alpha=...`` are the paper's ablations).
"""

from __future__ import annotations

from dataclasses import asdict

from ..evaluate import select_alpha
from ..fit import FitConfig, fit
from ..heads import CMMHead, Model
from . import FitData, Method, MethodResult, register_method

# Execution details, not part of what a run *is* (they do not change its numbers by design).
RUNTIME_OPTIONS = ("threads",)
_DEFAULTS = {k: v for k, v in asdict(FitConfig()).items() if k not in ("seed", "device")}


def fit_cmm(data: FitData, options: dict, progress=None) -> MethodResult:
    cfg = FitConfig(**options, seed=data.seed, device=str(data.device))
    log_every = max(cfg.iterations // 100, 1)
    cb = None if progress is None else (lambda t, loss: progress(t, cfg.iterations, loss))
    r = fit(data.x_train, data.y_train, data.T0, cfg, progress=cb, log_every=log_every)
    model = Model(r.W, r.T, data.T0, cfg.normalize_T_in_s, cfg.fusion, cfg.cmm_only)
    alpha, val_acc = select_alpha(model, data.x_val, data.y_val, fixed=cfg.alpha)  # val only
    return MethodResult(
        head=CMMHead(model, alpha),
        hparams={"alpha": alpha},
        val_acc=val_acc,
        fit_seconds=r.seconds,
        iterations=r.iterations,
        extra={"final_loss": r.losses[-1][1] if r.losses else None, "engine": r.engine, "threads": r.threads},
    )


METHOD = register_method(
    Method(
        name="cmm",
        fit=fit_cmm,
        defaults=_DEFAULTS,
        summary="Cross-Modal Mapping: residual map W + tuned prototypes T, CE + triplet, fused with zero-shot",
        source="Yang et al., Cross-Modal Mapping: Eliminating the Modality Gap for Few-Shot Image Classification",
        trained=True,
        runtime_options=RUNTIME_OPTIONS,
    )
)
