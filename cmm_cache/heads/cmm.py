"""The CMM head (and its ablations): W, T, T0, the fusion choices and the alpha chosen on val.

cmm  = 100 · normalize(v̂ W + v̂) Tᵀ     (T row-normalized if the run chose so)
clip = 100 · v̂ T0ᵀ                      (zero-shot CLIP)
prob fusion:  alpha · softmax(cmm) + softmax(clip)
logit fusion: alpha · cmm + clip
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmm_cache.heads.base import BOOL, LOGIT_SCALE, NUMBER, ArraySpec, Head, normalize_rows, register_head


@dataclass
class Model:
    """The trained CMM tensors and the choices that shape its logits (no alpha: that is chosen on val)."""

    W: torch.Tensor | None  # [d, d] or None (no-map ablation)
    T: torch.Tensor  # [C, d]
    T0: torch.Tensor  # [C, d] the cached text features (zero-shot classifier)
    normalize_T_in_s: bool = False
    fusion: str = "prob"
    cmm_only: bool = False

    def to(self, device) -> Model:
        def mv(t):
            return None if t is None else t.to(device, torch.float32)

        return Model(mv(self.W), mv(self.T), mv(self.T0), self.normalize_T_in_s, self.fusion, self.cmm_only)


def logits(model: Model, x: torch.Tensor, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cmm, clip) logits of normalized features x, restricted to `classes` rows of T/T0 if given.

    cmm  = 100 · normalize(v̂ W + v̂) Tᵀ   (T row-normalized if the run chose so)
    clip = 100 · v̂ T0ᵀ                   (zero-shot CLIP)
    """
    T, T0 = model.T, model.T0
    if classes is not None:
        T, T0 = T[classes], T0[classes]
    u = x @ model.W + x if model.W is not None else x
    T_s = normalize_rows(T) if model.normalize_T_in_s else T
    return LOGIT_SCALE * normalize_rows(u) @ T_s.t(), LOGIT_SCALE * x @ T0.t()


def fuse(cmm: torch.Tensor, clip: torch.Tensor, alpha: float, fusion: str) -> torch.Tensor:
    """prob fusion: alpha·softmax(cmm) + softmax(clip); logit fusion: alpha·cmm + clip."""
    if fusion == "logit":
        return alpha * cmm + clip
    return alpha * torch.softmax(cmm, -1) + torch.softmax(clip, -1)


@register_head
class CMMHead(Head):
    """CMM with its chosen alpha: W, T, T0 + fusion choices (alpha None: CMM logits alone)."""

    kind = "cmm"
    ARRAYS = {
        "T": ArraySpec(("C", "d")),
        "T0": ArraySpec(("C", "d")),
        "W": ArraySpec(("d", "d"), optional=True),
    }
    PARAMS = {
        "alpha": ((NUMBER, None), False),
        "fusion": (("prob", "logit"), False),
        "normalize_T_in_s": ((BOOL,), False),
        "cmm_only": ((BOOL,), False),
    }

    def __init__(self, model: Model, alpha: float | None):
        self.model = model
        self.alpha = None if model.cmm_only else alpha

    @property
    def num_classes(self) -> int:
        return int(self.model.T.shape[0])

    def logits(self, x, classes=None):
        cmm, clip = logits(self.model, x, classes)
        if self.alpha is None:
            return cmm
        return fuse(cmm, clip, self.alpha, self.model.fusion)

    def probs(self, x, classes=None):
        cmm, clip = logits(self.model, x, classes)
        if self.alpha is None:
            return torch.softmax(cmm, -1)
        if self.model.fusion == "logit":
            return torch.softmax(fuse(cmm, clip, self.alpha, "logit"), -1)
        return fuse(cmm, clip, self.alpha, "prob") / (1.0 + self.alpha)

    def components(self, x, classes=None):
        return {"cmm_only": logits(self.model, x, classes)[0]}

    def all_logits(self, x, classes=None):
        cmm, clip = logits(self.model, x, classes)
        head = cmm if self.alpha is None else fuse(cmm, clip, self.alpha, self.model.fusion)
        return {"head": head, "cmm_only": cmm, "zero_shot": clip}

    def state(self):
        m = self.model
        arrays = {"T": m.T, "T0": m.T0} | ({"W": m.W} if m.W is not None else {})
        params = {
            "alpha": self.alpha,
            "fusion": m.fusion,
            "normalize_T_in_s": bool(m.normalize_T_in_s),
            "cmm_only": bool(m.cmm_only),
        }
        return {k: v.detach().cpu().numpy() for k, v in arrays.items()}, params

    @classmethod
    def from_state(cls, arrays, params):
        model = Model(
            arrays.get("W"),
            arrays["T"],
            arrays["T0"],
            bool(params.get("normalize_T_in_s", False)),
            params.get("fusion", "prob"),
            bool(params.get("cmm_only", False)),
        )
        return cls(model, params.get("alpha"))

    def module(self):
        return _CMMModule(self)


class _CMMModule(torch.nn.Module):
    """Exportable twin of :meth:`CMMHead.probs` (features in, probabilities out; input is normalized here)."""

    def __init__(self, head: CMMHead):
        super().__init__()
        m = head.model
        d = m.T.shape[1]
        self.register_buffer("W", (m.W if m.W is not None else torch.zeros(d, d)).detach().float().clone())
        self.register_buffer("T", m.T.detach().float().clone())
        self.register_buffer("T0", m.T0.detach().float().clone())
        self.use_map = m.W is not None
        self.normalize_T_in_s = bool(m.normalize_T_in_s)
        self.logit_fusion = m.fusion == "logit"
        self.has_alpha = head.alpha is not None
        self.alpha = float(head.alpha) if head.alpha is not None else 0.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features / features.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        u = x @ self.W + x if self.use_map else x
        T = self.T / self.T.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12) if self.normalize_T_in_s else self.T
        cmm = 100.0 * (u / u.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)) @ T.t()
        if not self.has_alpha:
            return torch.softmax(cmm, -1)
        clip = 100.0 * x @ self.T0.t()
        if self.logit_fusion:
            return torch.softmax(self.alpha * cmm + clip, -1)
        return (self.alpha * torch.softmax(cmm, -1) + torch.softmax(clip, -1)) / (1.0 + self.alpha)
