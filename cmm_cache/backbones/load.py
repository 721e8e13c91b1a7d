"""CLIP backbones as data: the registry, name resolution and (offline-safe) loading.

The registry (``backbone_configs/registry.json``) maps an alias to an open_clip
model config name and a pretrained tag; ``cmm-tiny.json`` there is an open_clip
model config registered with open_clip at import time (random weights, tests).

A backbone name may be

- an alias of the registry (``rn50``, ``rn101``, ``vit-b-32``, ``vit-b-16``,
  ``rn50-arch``, ``tiny``),
- any open_clip ``MODEL/TAG`` or ``MODEL:TAG`` (``ViT-B-32/laion2b_s34b_b79k``),
- ``hf-hub:ORG/REPO``,
- any of the above with ``--pretrained PATH`` (a local weights file; the
  architecture comes from the name).

Weights are resolved *before* open_clip is asked to build the model: a file
already in the Hugging Face cache (or open_clip's legacy ``~/.cache/clip``)
is used directly, with no network; otherwise, when ``HF_HUB_OFFLINE`` is set
or the host cannot be reached within a few seconds, one :class:`CmmError`
says what to do instead of a long DNS wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

from .errors import CmmError

RANDOM_WEIGHTS_SEED = 0
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_CONFIG_DIR = Path(__file__).with_name("backbone_configs")


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


@lru_cache(maxsize=1)
def _registry() -> dict:
    try:
        text = resources.files("cmm_cache.backbone_configs").joinpath("registry.json").read_text()
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


# --------------------------------------------------------------------------- weights


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Can `host` be resolved and connected within `timeout` seconds (DNS included)?"""
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result["ok"]


def _offline_error(spec: BackboneSpec, why: str) -> CmmError:
    from .weights_source import fetch_hint

    return CmmError(
        f"Weights for {spec.name} ({spec.model}, pretrained '{spec.pretrained}') could not be had offline: {why}.",
        fetch_hint(spec),
    )


def _hf_cache_dir() -> str | None:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub freezes it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _cached_weight_file(cfg: dict) -> str | None:
    """A weights file for an open_clip pretrained cfg that is already on disk, or None."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
            if filename.endswith((".bin", ".pth")):
                names.insert(0, filename[:-4] + ".safetensors")
            for fn in names:
                try:
                    p = try_to_load_from_cache(repo, fn, cache_dir=_hf_cache_dir())
                except Exception:
                    p = None
                if isinstance(p, str) and os.path.isfile(p):
                    return p
    url = cfg.get("url", "")
    if url:
        p = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(p):
            return p
    return None


def resolve_weights(spec: BackboneSpec) -> tuple[str | None, dict]:
    """A local weights file for `spec` (downloading if allowed and reachable) and the preprocess cfg of its tag.

    Returns (None, {}) for random weights and hf-hub models. Fails within seconds
    with one clear message when the weights cannot be had.
    """
    import open_clip

    if spec.pretrained is None:
        return None, {}
    if spec.pretrained_is_file or os.path.isfile(spec.pretrained):
        p = Path(spec.pretrained)
        if not p.is_file():
            raise CmmError(
                f"Weights file {p} does not exist.",
                "Pass --pretrained with the path of a local open_clip/OpenAI CLIP weights file "
                "(.pt, .bin, .safetensors).",
            )
        # A local file of an alias whose tag is known (e.g. rn50 + RN50.pt) keeps that tag's preprocessing.
        tag = (_registry().get(spec.alias or "", {}) or {}).get("pretrained")
        cfg = open_clip.get_pretrained_cfg(spec.model, tag) if tag else {}
        return str(p), {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not cfg:
        raise CmmError(f"open_clip has no pretrained tag '{spec.pretrained}' for {spec.model}.")
    pre = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
    local = _cached_weight_file(cfg)
    if local:
        return local, pre
    if hf_offline():
        raise _offline_error(spec, "HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache")
    hosts = []
    if cfg.get("hf_hub"):
        hosts.append(urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname)
    if cfg.get("url"):
        hosts.append(urlparse(cfg["url"]).hostname)
    if not any(h and _reachable(h) for h in hosts):
        raise _offline_error(spec, f"no network ({', '.join(h for h in hosts if h)} cannot be reached)")
    try:
        path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:  # network errors of every kind
        raise _offline_error(spec, f"download failed ({e})") from e
    if not path or not os.path.isfile(path):
        raise _offline_error(spec, "download returned no file")
    return path, pre


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_device(device: str | None = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CmmError(f"--device {device} was asked for but no CUDA GPU is available.", "Use --device cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise CmmError(f"Unknown device '{device}'.", "Use auto, cpu, cuda or cuda:N.")
    return device


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
