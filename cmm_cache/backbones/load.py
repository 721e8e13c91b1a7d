"""Building a backbone: weights resolved first (offline-safe, :mod:`.weights`), then the open_clip model in eval mode.

:func:`load_backbone` returns a :class:`Backbone` (model, transform, tokenizer, feature size) whose
:meth:`Backbone.provenance` is what a cache records about its encoder (model, weights file and sha256, the
random-weights seed, preprocessing); :mod:`.identity` compares two such records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cmm_cache.backbones.registry import BackboneSpec, resolve_backbone
from cmm_cache.backbones.weights import (
    _is_torchscript,
    _offline_error,
    _reachable,
    file_sha256,
    hf_offline,
    resolve_weights,
)
from cmm_cache.errors import CmmError

RANDOM_WEIGHTS_SEED = 0


@dataclass
class Backbone:
    """A loaded backbone: model in eval mode on `device`, its transform and tokenizer."""

    spec: BackboneSpec
    model: object
    preprocess: object  # torchvision transform: PIL image -> tensor [3, H, W]
    tokenizer: object
    embed_dim: int
    image_size: tuple
    preprocess_cfg: dict
    weights_path: str | None
    weights_sha256: str | None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def describe_preprocessing(self) -> dict:
        return {
            "transform": " -> ".join(type(t).__name__ + _short(t) for t in getattr(self.preprocess, "transforms", [])),
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()},
            "flip_view": (
                "train images also encoded mirrored (horizontal flip, p = 1.0), applied to the decoded "
                "image before the transform"
            ),
        }

    def provenance(self) -> dict:
        return {
            "model": self.spec.model,
            "backbone_alias": self.spec.alias,
            "pretrained": self.spec.pretrained,
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "random_weights_seed": RANDOM_WEIGHTS_SEED
            if self.weights_path is None and self.spec.random_weights
            else None,
            "embed_dim": self.embed_dim,
            "image_size": list(self.image_size),
            "preprocessing": self.describe_preprocessing(),
        }


def _short(t) -> str:
    r = repr(t)
    if "(" in r and len(r) < 120:
        return r[r.index("(") :]
    return ""


# --------------------------------------------------------------------------- registry


# --------------------------------------------------------------------------- weights


def load_backbone(name: str, pretrained: str | os.PathLike | None = None, device: str = "cpu") -> Backbone:
    """Resolve, fetch (or refuse fast) and build a backbone in eval mode on `device`."""
    import open_clip
    import torch

    spec = name if isinstance(name, BackboneSpec) else resolve_backbone(name, pretrained)
    weights, pre = resolve_weights(spec)
    kwargs = {}
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        if key in pre:
            kwargs[arg] = pre[key]
    try:
        if spec.model.startswith("hf-hub:"):
            if hf_offline() is False and not _reachable("huggingface.co"):
                raise _offline_error(spec, "huggingface.co cannot be reached")
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model, device=device)
        elif weights is None:
            # Random weights, but the same ones in every process (resume, torchrun ranks, text vs image).
            import logging

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": that is the point here
                try:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        spec.model, pretrained=None, device="cpu", **kwargs
                    )
                finally:
                    logging.disable(logging.NOTSET)
            model = model.to(device)
        else:
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.model, pretrained=weights, device=device, **kwargs
                )
            except Exception:
                if not _is_torchscript(weights):
                    raise
                # OpenAI's original .pt files are TorchScript archives; they need weights_only=False.
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.model, pretrained=weights, device=device, weights_only=False, **kwargs
                )
    except CmmError:
        raise
    except Exception as e:
        raise CmmError(
            f"Could not build backbone {spec.name} ({spec.model}, weights {weights or spec.pretrained or 'random'}): "
            f"{e}",
            "Check that the weights file matches the architecture (see `cmm-cache backbones`).",
        ) from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(spec.model)
    pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    image_size = getattr(model.visual, "image_size", pcfg.get("size", 224))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    embed_dim = _embed_dim(model)
    return Backbone(
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        image_size=tuple(image_size),
        preprocess_cfg=pcfg,
        weights_path=weights,
        weights_sha256=file_sha256(weights) if weights else None,
        device=device,
    )


def _embed_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[-1])
    od = getattr(model.visual, "output_dim", None)
    if od:
        return int(od)
    import torch

    with torch.no_grad():
        return int(model.encode_text(torch.zeros(1, 8, dtype=torch.long)).shape[-1])
