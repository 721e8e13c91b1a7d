"""``extract --add-text``: give an existing cache the per-template text embeddings it lacks.

Caches written before ``text/<set>/per_template`` existed hold only the
template-averaged class features. Methods that use each template's embedding
as a sample need the per-template node; re-encoding every image for it would
be wasteful. This encodes the cache's own class names and templates with the
text tower of the very backbone the cache was extracted with (checked against
its provenance: architecture, weights file sha256; and the result must
reproduce the cache's class text features), then writes a copy of the file
with the new nodes and renames it into place. Image features, class text
features and the provenance stay byte for byte, so runs fitted on the cache
still match it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmm_cache import __version__
from cmm_cache.backbones.load import RANDOM_WEIGHTS_SEED, load_backbone
from cmm_cache.backbones.registry import register_model_configs, resolve_backbone
from cmm_cache.backbones.weights import file_sha256, resolve_weights
from cmm_cache.cache.info import cache_summary
from cmm_cache.cache.locate import find_cache
from cmm_cache.cache.lock import CacheLock
from cmm_cache.cache.reader import Cache, open_cache
from cmm_cache.cache.writer import add_text_nodes, remove_stale_tmp
from cmm_cache.errors import CmmError
from cmm_cache.extract.encode import class_text_features, encode_text_templates
from cmm_cache.extract.pipeline import ExtractResult
from cmm_cache.util.device import resolve_device

# The recomputed class features must match the cached ones this closely (cosine); autocast float16 on a GPU
# against float32 on the CPU differs by ~1e-4, other weights by far more.
MIN_COSINE = 0.999


@dataclass
class TextTower:
    """What :func:`cmm_cache.extract.encode.encode_text_templates` needs: a model with encode_text, its tokenizer."""

    model: object
    tokenizer: object
    device: str


def load_text_tower(spec, weights: str | None, device: str) -> TextTower:
    """The backbone's text tower with its weights; from a weights file, the image tower's are never loaded.

    Random weights (``tiny``, ``rn50-arch``) come from a seeded build of the whole model (the text weights
    depend on everything initialized before them), hub models from open_clip; both load the full backbone.
    """
    import open_clip
    import torch

    if weights is not None:
        register_model_configs()
        try:
            state = open_clip.factory.load_state_dict(weights)  # safetensors, state dicts, checkpoints
        except Exception:
            state = None  # e.g. OpenAI's TorchScript archives: the full loader knows them
        if state is not None:
            model = open_clip.create_model(spec.model, pretrained=None, device="cpu")
            text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
            missing, unexpected = model.load_state_dict(text_state, strict=False)
            if not unexpected and all(k.startswith("visual.") for k in missing):
                model.visual = torch.nn.Identity()  # encode_text never touches it; free its memory
                model = model.to(device).eval()
                return TextTower(model, open_clip.get_tokenizer(spec.model), device)
    bb = load_backbone(spec, device=device)
    return TextTower(bb.model, bb.tokenizer, device)


def _identity(cache: Cache, backbone: str, pretrained) -> tuple[object, str | None]:
    """(spec, weights file) of `backbone`, refused unless it is the backbone the cache was extracted with."""

    prov = cache.provenance
    spec = resolve_backbone(backbone, pretrained)
    was = f"{prov.get('model')} with weights {prov.get('pretrained') or 'random'}"
    hint = (
        "Pass the backbone (and --pretrained file) the cache was extracted with; `cmm-cache cache info` shows "
        "its provenance."
    )
    if spec.model != prov.get("model"):
        raise CmmError(f"{cache.path} was extracted with {was}, not {spec.model}.", hint)
    if spec.random_weights:
        if prov.get("weights_sha256") or prov.get("random_weights_seed") != RANDOM_WEIGHTS_SEED:
            raise CmmError(f"{cache.path} was extracted with {was}, not with random weights.", hint)
        return spec, None
    weights, _ = resolve_weights(spec)
    if weights is not None and file_sha256(weights) != prov.get("weights_sha256"):
        raise CmmError(
            f"{cache.path} was extracted with {was} (sha256 {str(prov.get('weights_sha256'))[:12]}...), "
            f"not with {weights}.",
            hint,
        )
    return spec, weights


def _per_template(cache: Cache, tower: TextTower, sets: list[str], progress=None) -> dict[str, np.ndarray]:

    out = {}
    for s in sets:
        report = None if progress is None else functools.partial(progress, s)
        per = encode_text_templates(tower, cache.classnames, cache.templates(s), progress=report)
        cos = np.sum(class_text_features(per) * cache.text(s), axis=1)
        if cos.min() < MIN_COSINE:
            raise CmmError(
                f"The text features this backbone computes for template set '{s}' do not match the cache's "
                f"(cosine {cos.min():.4f}): these are not the weights or prompts {cache.path} was extracted with.",
                "Pass the backbone and --pretrained file the cache was extracted with, or re-extract with --force.",
            )
        out[s] = per
    return out


def add_text(
    dataset: str,
    backbone: str,
    *,
    pretrained: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    text_progress=None,
    stage=None,
) -> ExtractResult:
    """Add ``text/<set>/per_template`` to the cache of (`dataset`, `backbone`) (or the file `out`).

    `text_progress(template set, prompts done, prompts total)` follows the text encoding; `stage(what)` is
    called when loading the text tower and writing the file start.
    """

    final = Path(out) if out else find_cache(dataset, backbone, cache_root)  # as fit finds it (short names too)
    if not final.exists():
        raise CmmError(
            f"No cache at {final} to add text embeddings to.",
            f"Extract it: `cmm-cache extract --dataset {dataset} --backbone {backbone} --out {final}` "
            "(new caches hold them).",
        )
    dev = resolve_device(device)
    result = ExtractResult(path=str(final), dataset=dataset, backbone=backbone, status="up-to-date", device=dev)
    with CacheLock(final):
        cache = open_cache(final)
        lacking = [s for s in cache.text_sets if not cache.has_per_template(s)]
        if lacking:
            spec, weights = _identity(cache, backbone, pretrained)
            if stage is not None:
                stage(f"loading the text tower of {backbone} on {dev}")
            per = _per_template(cache, load_text_tower(spec, weights, dev), lacking, text_progress)
            made = {
                "added_by": f"cmm-cache {__version__} extract --add-text",
                "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "device": dev,
                "precision": "autocast float16" if dev.startswith("cuda") else "float32",
            }
            if stage is not None:
                stage(f"writing {final}")
            add_text_nodes(final, per, made)
            remove_stale_tmp(final)
            result.status = "text-added"
            result.notes.append(f"added per-template text embeddings for template set(s) {', '.join(lacking)}")
        else:
            result.notes.append("the cache already holds per-template text embeddings for every template set")
    result.text_sets = list(cache.text_sets)
    result.splits = dict(cache_summary(final).get("splits", {}))
    result.fewshot_groups = len(cache.fewshot_groups)
    return result
