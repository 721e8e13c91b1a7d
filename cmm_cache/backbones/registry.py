"""Backbones as data: the registry of aliases and the resolution of a user's backbone name (no weights loaded).

The registry (``backbones/configs/registry.json``) maps an alias to an open_clip model config name and a
pretrained tag; ``cmm-tiny.json`` beside it is an open_clip model config registered with open_clip on first use
(random weights, tests). A backbone name may be

- an alias of the registry (``rn50``, ``rn101``, ``vit-b-32``, ``vit-b-16``, ``rn50-arch``, ``tiny``),
- any open_clip ``MODEL/TAG`` or ``MODEL:TAG`` (``ViT-B-32/laion2b_s34b_b79k``),
- ``hf-hub:ORG/REPO``,
- any of the above with ``--pretrained PATH`` (a local weights file; the architecture comes from the name).

This module is the leaf of the stage: :mod:`.weights` (where weights come from) and :mod:`.load` (building the
model) import it, never the reverse.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from cmm_cache.errors import CmmError

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


_CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name resolves to (no weights loaded)."""

    name: str  # as given by the user
    model: str  # open_clip model config name (or hf-hub:...)
    pretrained: str | None  # open_clip tag, a local file path, or None (random weights)
    notes: str = ""
    alias: str | None = None  # registry alias when the name is one

    @property
    def pretrained_is_file(self) -> bool:
        return self.pretrained is not None and (os.sep in self.pretrained or Path(self.pretrained).suffix != "")

    @property
    def random_weights(self) -> bool:
        return self.pretrained is None and not self.model.startswith("hf-hub:")


@lru_cache(maxsize=1)
def _registry() -> dict:
    try:
        text = resources.files("cmm_cache.backbones.configs").joinpath("registry.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover - source checkout without package data
        text = (_CONFIG_DIR / "registry.json").read_text()
    return json.loads(text)["backbones"]


_configs_registered = False


def register_model_configs() -> None:
    """Register the shipped open_clip model configs (``cmm-tiny``) with open_clip, once."""
    global _configs_registered
    if _configs_registered:
        return
    import open_clip

    for p in sorted(_CONFIG_DIR.glob("*.json")):
        if p.name != "registry.json":
            open_clip.add_model_config(p)
    _configs_registered = True


def list_backbones() -> list[BackboneSpec]:
    """The registered aliases, in registry order."""
    return [
        BackboneSpec(
            name=alias, model=e["model"], pretrained=e.get("pretrained"), notes=e.get("notes", ""), alias=alias
        )
        for alias, e in _registry().items()
    ]


def resolve_backbone(name: str, pretrained: str | os.PathLike | None = None) -> BackboneSpec:
    """Turn a user's backbone name (+ optional --pretrained PATH) into a :class:`BackboneSpec`."""
    import open_clip

    register_model_configs()
    name = str(name).strip()
    reg = _registry()
    alias = name.lower()
    pre_path = str(Path(pretrained).expanduser()) if pretrained else None
    if alias in reg:
        e = reg[alias]
        return BackboneSpec(
            name=name,
            model=e["model"],
            pretrained=pre_path if pre_path else e.get("pretrained"),
            notes=e.get("notes", ""),
            alias=alias,
        )
    if name.startswith("hf-hub:"):
        if pre_path:
            raise CmmError(f"--pretrained cannot be combined with {name} (the hub repo brings its own weights).")
        return BackboneSpec(name=name, model=name, pretrained=None, notes="open_clip model from the Hugging Face hub")
    model, tag = name, None
    for sep in ("/", ":"):
        if sep in name:
            model, tag = name.split(sep, 1)
            break
    known = open_clip.list_models()
    if model not in known:
        lower = {m.lower(): m for m in known}
        if model.lower() in lower:
            model = lower[model.lower()]
        else:
            raise CmmError(
                f"Unknown backbone '{name}'.",
                "Use an alias (" + ", ".join(reg) + "), an open_clip MODEL/TAG such as ViT-B-32/laion2b_s34b_b79k "
                "(see `cmm-cache backbones` and open_clip.list_pretrained()), or hf-hub:ORG/REPO.",
            )
    if pre_path:
        return BackboneSpec(name=name, model=model, pretrained=pre_path, notes="local weights file")
    if tag is None:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise CmmError(
            f"Backbone '{name}' names an architecture but no weights.",
            f"Add a pretrained tag ({model}/TAG; known tags: {', '.join(tags) or 'none'}) or pass --pretrained PATH.",
        )
    if not open_clip.get_pretrained_cfg(model, tag):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise CmmError(
            f"open_clip has no pretrained tag '{tag}' for {model}.",
            f"Known tags: {', '.join(tags) or 'none'}; or pass --pretrained PATH to a local weights file.",
        )
    return BackboneSpec(name=name, model=model, pretrained=tag, notes="open_clip pretrained tag")
