"""The linear classifier head shared by the linear baselines: ``logits = x Wᵀ + b``.

Linear probing, WiSE-FT, cross-modal linear probing and GDA all end in a
linear map of the normalized image feature (their logit scale, e.g. CLIP's
100, is folded into ``W``), so one head kind serves them all and a run of any
of them is scored, exported and reloaded the same way.
"""

from __future__ import annotations

import torch

from cmm_cache.heads.base import ArraySpec, Head, LinearProbsModule, register_head


@register_head
class LinearHead(Head):
    """logits = x Wᵀ + b for normalized features x; W [C, d] (scale folded in), b [C] or None."""

    kind = "linear"
    ARRAYS = {"weight": ArraySpec(("C", "d")), "bias": ArraySpec(("C",), optional=True)}

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, x, classes=None):
        W, b = self.weight, self.bias
        if classes is not None:
            W, b = W[classes], (None if b is None else b[classes])
        z = x @ W.t()
        return z if b is None else z + b

    def state(self):
        arrays = {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})
        return {k: v.detach().cpu().float().numpy() for k, v in arrays.items()}, {}

    @classmethod
    def from_state(cls, arrays, params):
        return cls(arrays["weight"].float(), arrays["bias"].float() if "bias" in arrays else None)

    def module(self):
        return LinearProbsModule(self.weight, self.bias)
