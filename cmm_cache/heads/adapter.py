"""The CLIP-Adapter head of Lin et al.'s cross-modal adapter: a residual two-layer MLP, then a linear head.

    a = ReLU(W₂ ReLU(W₁ x))            W₁ [d/4, d], W₂ [d, d/4], no biases
    z = r·a + (1 − r)·x                r = 0.2; z is not re-normalized
    logits = s · z Wᵀ                  W [C, d], s = exp(4.60517) (their LogitHead, fixed)

on L2-normalized image features x (linzhiqiu/cross_modal_adaptation ``engine/model/head.py`` @ 39335d9,
``Adapter`` and ``make_classifier_head``; ``engine/model/logit.py`` @ c7e7e68).
"""

from __future__ import annotations

import torch

from cmm_cache.heads.base import NUMBER, ArraySpec, Head, register_head


def adapter_logits(x, W1, W2, W, ratio: float, scale: float) -> torch.Tensor:
    a = torch.relu(torch.relu(x @ W1.transpose(-1, -2)) @ W2.transpose(-1, -2))
    z = ratio * a + (1.0 - ratio) * x
    return scale * (z @ W.transpose(-1, -2))


class AdapterProbsModule(torch.nn.Module):
    """softmax of the adapter head's logits on normalize(features): its exportable form."""

    def __init__(self, W1, W2, W, ratio: float, scale: float):
        super().__init__()
        for name, t in (("W1", W1), ("W2", W2), ("W", W)):
            self.register_buffer(name, t.detach().float().clone())
        self.ratio, self.scale = float(ratio), float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features / features.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(adapter_logits(x, self.W1, self.W2, self.W, self.ratio, self.scale), -1)


@register_head
class AdapterHead(Head):
    kind = "adapter"
    ARRAYS = {"W1": ArraySpec(("h", "d")), "W2": ArraySpec(("d", "h")), "W": ArraySpec(("C", "d"))}
    PARAMS = {"ratio": ((NUMBER,), True), "scale": ((NUMBER,), True)}

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor, W: torch.Tensor, ratio: float, scale: float):
        self.W1, self.W2, self.W = W1, W2, W
        self.ratio, self.scale = float(ratio), float(scale)

    @property
    def num_classes(self) -> int:
        return int(self.W.shape[0])

    def logits(self, x, classes=None):
        W = self.W if classes is None else self.W[classes]
        return adapter_logits(x, self.W1, self.W2, W, self.ratio, self.scale)

    def state(self):
        arrays = {k: getattr(self, k).detach().cpu().float().numpy() for k in ("W1", "W2", "W")}
        return arrays, {"ratio": self.ratio, "scale": self.scale}

    @classmethod
    def from_state(cls, arrays, params):
        return cls(arrays["W1"].float(), arrays["W2"].float(), arrays["W"].float(), params["ratio"], params["scale"])

    def module(self):
        return AdapterProbsModule(self.W1, self.W2, self.W, self.ratio, self.scale)
