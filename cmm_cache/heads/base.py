"""Classifier heads: what a fitted run *is* when it scores images.

A head maps L2-normalized CLIP image features ``x`` [n, d] to class
probabilities [n, C]. Every method (CMM, its ablations, the baselines) ends in
one, and everything downstream — ``eval``, ``predict``, ``export``, shift-set
scoring — uses only this interface, so every run kind is scored the same way:

    head.logits(x, classes=None)   scores whose arg-max is the prediction
    head.probs(x, classes=None)    probabilities (rows sum to 1)
    head.components(x, classes)    named extra scores reported beside the head's
                                   own accuracy (CMM: its logits without fusion)
    head.all_logits(x, classes)    {"head": logits, **components} in one pass
                                   (may add "zero_shot" when it comes for free)
    head.module()                  a plain ``torch.nn.Module`` (exportable with
                                   torch.export): features -> probs
    head.state()                   (arrays, params): arrays go to weights.npz,
                                   params (JSON) to result.json["head"]
    load_head(kind, arrays, params)   the inverse, through the registry

``classes`` (an index tensor into the head's classes) restricts scoring to
those classes *before* any softmax, as ImageNet-A/-R need (200 of 1000).

A head never needs the cache: a run folder holding its arrays and params can
be scored, exported and used for prediction on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .fit import LOGIT_SCALE, normalize_rows

# ----------------------------------------------------------------------------
# The registry


HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head kind loadable from a run folder."""
    if cls.kind in HEADS and HEADS[cls.kind] is not cls:
        raise ValueError(f"head kind '{cls.kind}' registered twice")
    HEADS[cls.kind] = cls
    return cls


def load_head(kind: str, arrays: dict, params: dict) -> Head:
    """Rebuild a head from what :meth:`Head.state` returned (arrays may be numpy or torch)."""
    from .errors import CmmError

    if kind not in HEADS:
        _import_method_heads()
    if kind not in HEADS:
        raise CmmError(
            f"Unknown classifier head '{kind}'.",
            f"Known heads: {', '.join(sorted(HEADS))}. Was the run written by a newer cmm-cache?",
        )
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))) for k, v in arrays.items()}
    return HEADS[kind].from_state(tensors, dict(params))


def _import_method_heads() -> None:
    """Heads defined by the method modules register themselves on import."""
    try:
        from . import methods  # noqa: F401
    except ImportError:  # no methods package (yet): only the heads defined here exist
        pass


class Head:
    """Base class. Subclasses set ``kind`` and implement logits / state / from_state."""

    kind: ClassVar[str] = ""

    def logits(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def probs(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Default: softmax of the logits. Heads whose scores are already mixtures override this."""
        return torch.softmax(self.logits(x, classes), dim=-1)

    def components(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}

    def all_logits(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The head's logits and its components; override to share work between them."""
        return {"head": self.logits(x, classes), **self.components(x, classes)}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, arrays: dict[str, torch.Tensor], params: dict) -> Head:
        raise NotImplementedError

    def to(self, device) -> Head:
        arrays, params = self.state()
        return type(self).from_state(
            {k: torch.from_numpy(np.asarray(v)).to(device, torch.float32) for k, v in arrays.items()}, params
        )

    def module(self) -> torch.nn.Module:
        """A plain torch module (no cmm-cache code at run time once exported) with the same probabilities."""
        raise NotImplementedError(f"head '{self.kind}' has no exportable module")

    @property
    def num_classes(self) -> int:
        raise NotImplementedError


# ----------------------------------------------------------------------------
# CMM (and its ablations)


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


@register_head
class ZeroShotHead(Head):
    """CLIP zero-shot: 100 · v̂ T0ᵀ with the cached (template-averaged) text features."""

    kind = "zero-shot"

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
        return _LinearProbsModule(LOGIT_SCALE * self.T0, None)


class _LinearProbsModule(torch.nn.Module):
    """softmax(normalize(x) Wᵀ + b): the exportable form of any linear head."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer(
            "bias", (bias if bias is not None else torch.zeros(weight.shape[0])).detach().float().clone()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features / features.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(x @ self.weight.t() + self.bias, -1)
