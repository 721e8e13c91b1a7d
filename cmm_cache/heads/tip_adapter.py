"""Tip-Adapter's head (Zhang et al., ECCV 2022): zero-shot logits plus a cache model of the few-shot keys.

logits = 100 · x T0ᵀ + α · exp(−β (1 − x Kᵀ)) V
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmm_cache.heads.base import NUMBER, ArraySpec, Head, register_head


def tip_logits(x, keys, values, T0, alpha, beta):
    """100 · x T0ᵀ + α · exp(−β (1 − x Kᵀ)) V (values: one-hot [N, C])."""
    return 100.0 * x @ T0.t() + alpha * torch.exp(-beta * (1.0 - x @ keys.t())) @ values


@register_head
class TipHead(Head):
    """Tip-Adapter's fused logits with its keys, key labels, T0 and the chosen (alpha, beta)."""

    kind = "tip-adapter"
    ARRAYS = {
        "keys": ArraySpec(("N", "d")),
        "key_labels": ArraySpec(("N",), kind="int", index_of="C"),
        "T0": ArraySpec(("C", "d")),
    }
    PARAMS = {"alpha": ((NUMBER,), True), "beta": ((NUMBER,), True)}

    def __init__(self, keys, key_labels, T0, alpha: float, beta: float):
        self.keys, self.key_labels, self.T0 = keys, key_labels.long(), T0
        self.alpha, self.beta = float(alpha), float(beta)
        self.values = F.one_hot(self.key_labels, T0.shape[0]).to(keys.dtype)

    @property
    def num_classes(self) -> int:
        return int(self.T0.shape[0])

    def logits(self, x, classes=None):
        return self.all_logits(x, classes)["head"]

    def all_logits(self, x, classes=None):
        T0, V = (self.T0, self.values) if classes is None else (self.T0[classes], self.values[:, classes])
        clip = 100.0 * x @ T0.t()
        cache = torch.exp(-self.beta * (1.0 - x @ self.keys.t())) @ V
        return {"head": clip + self.alpha * cache, "zero_shot": clip}

    def state(self):
        arrays = {"keys": self.keys, "key_labels": self.key_labels, "T0": self.T0}
        return {k: v.detach().cpu().numpy() for k, v in arrays.items()}, {"alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_state(cls, arrays, params):
        return cls(arrays["keys"].float(), arrays["key_labels"], arrays["T0"].float(), params["alpha"], params["beta"])

    def module(self):
        return _TipModule(self)


class _TipModule(torch.nn.Module):
    """Exportable twin of :meth:`TipHead.probs` (normalizes its input)."""

    def __init__(self, head: TipHead):
        super().__init__()
        for name in ("keys", "values", "T0"):
            self.register_buffer(name, getattr(head, name).detach().float().clone())
        self.alpha, self.beta = head.alpha, head.beta

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features / features.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(tip_logits(x, self.keys, self.values, self.T0, self.alpha, self.beta), -1)
