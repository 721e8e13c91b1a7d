"""A d×d map of the image feature followed by the zero-shot text classifier (ProLIP's linear variant)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmm_cache.heads.base import ArraySpec, Head, register_head


@register_head
class MapHead(Head):
    """100 · normalize(x Wᵀ) T0ᵀ: a linear map of the image feature, then cosine to the text classifier."""

    kind = "linear-map"
    ARRAYS = {"W": ArraySpec(("d", "d")), "T0": ArraySpec(("C", "d"))}

    def __init__(self, W: torch.Tensor, T0: torch.Tensor):
        self.W, self.T0 = W, T0

    @property
    def num_classes(self) -> int:
        return int(self.T0.shape[0])

    def logits(self, x, classes=None):
        T0 = self.T0 if classes is None else self.T0[classes]
        return 100.0 * F.normalize(x @ self.W.t(), dim=-1) @ T0.t()

    def state(self):
        return {"W": self.W.detach().cpu().numpy(), "T0": self.T0.detach().cpu().numpy()}, {}

    @classmethod
    def from_state(cls, arrays, params):
        return cls(arrays["W"].float(), arrays["T0"].float())

    def module(self):
        return _MapModule(self)


class _MapModule(torch.nn.Module):
    def __init__(self, head: MapHead):
        super().__init__()
        self.register_buffer("W", head.W.detach().float().clone())
        self.register_buffer("T0", head.T0.detach().float().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features @ self.W.t()  # the input's scale cancels in the normalization
        z = z / z.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(100.0 * z @ self.T0.t(), -1)
