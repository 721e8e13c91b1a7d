"""``zero-shot``: CLIP's own classifier, the cached class text features (Radford et al., 2021).

logits = 100 · v̂ T0ᵀ, T0 = normalize(mean of the raw template embeddings)
(paper eq. 2 of the CMM paper; CLIP's prompt ensembling). Nothing is learned;
the val accuracy is reported for comparison only.
"""

from __future__ import annotations

from cmm_cache.evaluation.metrics import head_accuracy
from cmm_cache.heads.zero_shot import ZeroShotHead
from cmm_cache.methods.base import FitData, Method, MethodResult
from cmm_cache.methods.registry import register_method


def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    head = ZeroShotHead(data.T0)
    return MethodResult(head=head, hparams={}, val_acc=head_accuracy(head, data.x_val, data.y_val), fit_seconds=0.0)


METHOD = register_method(
    Method(
        name="zero-shot",
        fit=fit,
        defaults={},
        summary="CLIP zero-shot: cosine to the template-averaged class text features",
        source="Radford et al., ICML 2021 (openai/CLIP); text features as cached by extract",
        rank=0,
        cost=0.1,
        selection="none (nothing to choose)",
    )
)
