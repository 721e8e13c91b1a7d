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

``head.input`` says what a head consumes: ``"features"`` (every head but one: L2-normalized final image
features, as above) or ``"block_inputs"`` (a partial-finetuning head: the raw inputs of the image tower's
last blocks, ``[n, *head.input_shape]``; it normalizes its own output before the linear head).

``classes`` (an index tensor into the head's classes) restricts scoring to
those classes *before* any softmax, as ImageNet-A/-R need (200 of 1000).

A head never needs the cache: a run folder holding its arrays and params can
be scored, exported and used for prediction on its own.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

import numpy as np
import torch

from cmm_cache.errors import CmmError

LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed (every head and the trainers: softmax(100·cos))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------
# The registry: every module of this package defines head kinds (found by discovery, no list to keep)


HEADS: dict[str, type[Head]] = {}
_discovered = False


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head kind loadable from a run folder."""
    if cls.kind in HEADS and HEADS[cls.kind] is not cls:
        raise ValueError(f"head kind '{cls.kind}' registered twice")
    HEADS[cls.kind] = cls
    return cls


def discover_heads() -> dict[str, type[Head]]:
    """Import every module of :mod:`cmm_cache.heads` once (each registers its kinds) and return the registry.

    A module that fails to import raises its own error here: a broken head module is never mistaken for an
    unknown head kind.
    """
    global _discovered
    if not _discovered:
        import cmm_cache.heads as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True
    return HEADS


def load_head(kind: str, arrays: dict, params: dict) -> Head:
    """Rebuild a head from what :meth:`Head.state` returned (arrays may be numpy or torch)."""
    heads = discover_heads()
    if kind not in heads:
        raise CmmError(
            f"Unknown classifier head '{kind}'.",
            f"Known heads: {', '.join(sorted(heads))}. Was the run written by a newer cmm-cache?",
        )
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))) for k, v in arrays.items()}
    return heads[kind].from_state(tensors, dict(params))


class Head:
    """Base class. Subclasses set ``kind`` and implement logits / state / from_state."""

    kind: ClassVar[str] = ""
    input: ClassVar[str] = "features"  # or "block_inputs" (see the module docstring)

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


class LinearProbsModule(torch.nn.Module):
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
