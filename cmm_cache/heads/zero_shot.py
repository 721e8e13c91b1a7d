"""CLIP's zero-shot head: the cached class text features T0 as a linear classifier."""

from __future__ import annotations

import torch

from cmm_cache.heads.base import LOGIT_SCALE, ArraySpec, Head, LinearProbsModule, register_head


@register_head
class ZeroShotHead(Head):
    """CLIP zero-shot: 100 · v̂ T0ᵀ with the cached (template-averaged) text features."""

    kind = "zero-shot"
    ARRAYS = {"T0": ArraySpec(("C", "d"))}

    def __init__(self, T0: torch.Tensor):
        self.T0 = T0

    @property
    def num_classes(self) -> int:
        return int(self.T0.shape[0])

    def logits(self, x, classes=None):
        T0 = self.T0 if classes is None else self.T0[classes]
        return LOGIT_SCALE * x @ T0.t()

    def state(self):
        return {"T0": self.T0.detach().cpu().numpy()}, {}

    @classmethod
    def from_state(cls, arrays, params):
        return cls(arrays["T0"])

    def module(self):
        return LinearProbsModule(LOGIT_SCALE * self.T0, None)
