"""The head of a partial-finetuning run: fine-tuned last blocks of the image tower, then a linear head.

    logits = s · normalize(suffix(h)) Wᵀ          h: the cached input of the tower's last K blocks

``suffix`` is :class:`cmm_cache.heads.tower.TowerSuffix` holding the fine-tuned blocks (and projection), W
[C, d] the trained linear head (not re-normalized), s the fixed logit scale (Lin et al.: e⁴). Unlike every
other head it consumes **block inputs**, not final features (:attr:`input` = ``"block_inputs"``): ``eval``
scores it on the cache's ``splits/test/block_inputs``, ``predict``/``export`` run the frozen tower up to the
cut and then this head. Its arrays (weights.npz) are tensors only: ``weight`` and ``suffix.<key>`` per
tensor of the fine-tuned part; its params say how to rebuild it (the cut's config, input shape and the
fingerprint of the frozen prefix the inputs must come from).
"""

from __future__ import annotations

import torch

from cmm_cache.heads.base import NUMBER, OBJECT, ArraySpec, Head, normalize_rows, register_head
from cmm_cache.heads.tower import TowerSuffix

SUFFIX_PREFIX = "suffix."


class BlockProbsModule(torch.nn.Module):
    """Block inputs -> class probabilities: the fine-tuned suffix, L2 normalization, the scaled linear head."""

    def __init__(self, suffix: TowerSuffix, weight: torch.Tensor, scale: float):
        super().__init__()
        self.suffix = suffix
        self.register_buffer("weight", weight.detach().float().clone())
        self.scale = float(scale)

    def forward(self, block_inputs: torch.Tensor) -> torch.Tensor:
        f = self.suffix(block_inputs)
        f = f / f.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(self.scale * (f @ self.weight.t()), -1)


@register_head
class PartialFTHead(Head):
    """Fine-tuned tower suffix + linear head on the cached block inputs (see the module docstring)."""

    kind = "partial-ft"
    input = "block_inputs"
    # The fine-tuned blocks' tensors (``suffix.*``) depend on the architecture: from_state checks them against
    # the cut's config (a missing or misshapen one is a damaged run folder).
    ARRAYS = {"weight": ArraySpec(("C", "e"))}
    PARAMS = {"logit_scale": ((NUMBER,), True), "cut": ((OBJECT,), True)}

    def __init__(self, suffix: TowerSuffix, weight: torch.Tensor, logit_scale: float, cut: dict):
        self.suffix = suffix.eval()
        self.weight = weight.detach().float()
        self.logit_scale = float(logit_scale)
        self.cut = dict(cut)  # arch, blocks, input_shape, prefix_sha256, suffix_sha256 (the init), config

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def input_shape(self) -> tuple:
        return tuple(int(v) for v in self.cut["input_shape"])

    def features(self, block_inputs: torch.Tensor) -> torch.Tensor:
        """The fine-tuned image features [n, d] (raw, as the tower's output) of block inputs [n, *input_shape]."""
        with torch.no_grad():
            return self.suffix(block_inputs)

    def logits(self, x, classes=None):
        W = self.weight if classes is None else self.weight[classes]
        return self.logit_scale * normalize_rows(self.features(x)) @ W.t()

    def state(self):
        arrays = {"weight": self.weight.cpu().numpy()}
        for k, v in self.suffix.state().items():
            arrays[SUFFIX_PREFIX + k] = v.detach().cpu().float().numpy()
        return arrays, {"logit_scale": self.logit_scale, "cut": self.cut}

    @classmethod
    def from_state(cls, arrays, params):
        cut = dict(params["cut"])
        state = {k[len(SUFFIX_PREFIX) :]: v for k, v in arrays.items() if k.startswith(SUFFIX_PREFIX)}
        suffix = TowerSuffix(cut["config"], state)
        d = suffix.check(cut["input_shape"])  # a damaged or foreign run folder fails here, not at scoring time
        weight = arrays["weight"].float()
        if weight.ndim != 2 or weight.shape[1] != d:
            raise ValueError(f"the linear head is {list(weight.shape)}, the blocks give {d}-d features")
        return cls(suffix, weight, float(params["logit_scale"]), cut)

    def to(self, device):
        h = type(self)(self.suffix, self.weight, self.logit_scale, self.cut)
        h.suffix = TowerSuffix(self.cut["config"], self.suffix.state()).to(device).eval()
        h.weight = self.weight.to(device)
        return h

    def module(self) -> torch.nn.Module:
        suffix = TowerSuffix(self.cut["config"], self.suffix.state()).eval()
        for p in suffix.parameters():
            p.requires_grad_(False)
        return BlockProbsModule(suffix, self.weight.cpu(), self.logit_scale).eval()
