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
    _offline_error,
    _reachable,
    code_needed_error,
    file_sha256,
    hf_offline,
    remember_local_weights,
    resolve_weights,
    weights_load_mode,
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


def load_backbone(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str = "cpu",
    *,
    expect_sha256: str | None = None,
) -> Backbone:
    """Resolve, fetch (or refuse fast) and build a backbone in eval mode on `device`.

    Weights are never unpickled: a file is loaded with ``torch.load(weights_only=True)`` (or as safetensors);
    only OpenAI's original TorchScript archives, recognised by their published sha256
    (:func:`~cmm_cache.backbones.weights.weights_load_mode`), are loaded as TorchScript. Anything else that
    needs more is refused with the format to convert it to. `expect_sha256`: the weights file must have this
    sha256, checked before it is loaded (predict/export: the run's record).
    """
    import open_clip
    import torch

    spec = name if isinstance(name, BackboneSpec) else resolve_backbone(name, pretrained)
    weights, pre = resolve_weights(spec)
    sha = file_sha256(weights) if weights else None  # before anything reads the file as weights
    if expect_sha256 is not None and sha != expect_sha256:
        raise CmmError(
            f"The weights file {weights or '(none: random weights)'} is not the one expected "
            f"(sha256 {str(sha)[:16]}..., expected {expect_sha256[:16]}...); it was not loaded.",
            "Pass --pretrained with the weights file the cache was extracted with (same sha256).",
        )
    mode = weights_load_mode(weights, sha) if weights else "tensors"
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
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model, device=device, weights_only=True)
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
            # "torchscript" only for OpenAI's published archives (checked by sha256 above); never a pickle.
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.model, pretrained=weights, device=device, weights_only=mode != "torchscript", **kwargs
                )
            except Exception as e:
                if _needs_unpickling(e):
                    raise code_needed_error(weights, "a pickle that holds more than tensors") from None
                raise
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
    if weights and spec.pretrained_is_file:
        remember_local_weights(weights, sha)
    return Backbone(
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        image_size=tuple(image_size),
        preprocess_cfg=pcfg,
        weights_path=weights,
        weights_sha256=sha,
        device=device,
    )


def _needs_unpickling(e: BaseException) -> bool:
    """Whether torch refused a file because loading it would need more than ``weights_only=True`` allows."""
    import pickle

    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, pickle.UnpicklingError):
            return True
        text = str(err or "")
        if "Weights only load failed" in text or "weights_only" in text and "TorchScript" in text:
            return True
    return False


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
