"""``zero-shot``: CLIP's own classifier, the cached class text features (Radford et al., 2021).

    logits = 100 · v̂ T0ᵀ,   T0_c = normalize( (1/M) Σ_m e_{c,m} )

with e_{c,m} the raw (un-normalized) text embedding of class c under template m: the CMM paper's eq. 2,
as the cache stores it (also Lin et al.'s zero-shot weights since their commit 39335d9). Nothing is learned;
the val accuracy is reported for comparison only.

**How this differs from CLIP's prompt ensembling.** CLIP's notebook (openai/CLIP
``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` @ e58d494, ``zeroshot_classifier``) normalizes each
template's embedding *first*: ``t_c = normalize( (1/M) Σ_m e_{c,m} / ‖e_{c,m}‖ )``. Both are unit vectors in
the span of the same template directions ê_{c,m}; they weight them differently: CLIP's form weights every
template equally, T0 weights template m by its raw norm ‖e_{c,m}‖ (T0_c ∝ Σ_m ‖e_{c,m}‖ ê_{c,m}), so a template
whose embedding is longer pulls the class vector towards itself. The norms vary per class and template,
so this is not a global rescaling: the class vectors point in (slightly) other directions, which can flip
near-tied predictions and moves every method that starts from or is pulled towards T0. They are equal
when a set has one template (the CoOp/Tip-Adapter sets of every dataset but ImageNet) or when a class's
template norms are equal. The CLIP form is what Tip-Adapter, GDA, LP++, ProLIP and Lin et al. before
39335d9 use; ``lp++`` and the cross-modal linear probe compute it from the cache's per-template embeddings.
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
