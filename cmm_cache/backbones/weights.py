"""Where a backbone's weights come from, and how to fetch them by hand for a machine without network.

open_clip resolves a pretrained tag to a Hugging Face repo (and file) or a URL;
the message for missing weights names that repo and the command of the
Hugging Face CLI that is actually installed (``hf`` in current huggingface_hub).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backbones import BackboneSpec


def hf_cli() -> str | None:
    """The Hugging Face CLI the installed huggingface_hub provides: ``hf`` (0.34 on), ``huggingface-cli`` before."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        scripts = {e.name for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"}
    except PackageNotFoundError:
        return None
    return next((name for name in ("hf", "huggingface-cli") if name in scripts), None)


def weights_source(spec: BackboneSpec) -> tuple[str | None, str | None, str | None]:
    """(Hugging Face repo, file in it, URL) open_clip fetches the weights of `spec` from (None where absent)."""
    if spec.model.startswith("hf-hub:"):
        return spec.model[len("hf-hub:") :], None, None
    if spec.pretrained is None or spec.pretrained_is_file:
        return None, None, None
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}
    hub, url = cfg.get("hf_hub", ""), cfg.get("url") or None
    if not hub:
        return None, None, url
    if hub.endswith("/"):  # "org/repo/": open_clip's default file names, the safetensors one first
        return hub.rstrip("/"), HF_SAFE_WEIGHTS_NAME, url
    repo, filename = os.path.split(hub)  # "org/repo/file"
    return repo, filename, url


def fetch_hint(spec: BackboneSpec) -> str:
    repo, filename, url = weights_source(spec)
    if repo:
        cli = hf_cli()
        args = f"download {repo}" + (f" {filename}" if filename else "")
        cmd = f"`{cli} {args}`" if cli else f"`pip install huggingface_hub`, then `hf {args}`"
        return (
            f"On a machine with network, fetch them from the Hugging Face repo {repo} into the Hugging Face cache "
            f"with {cmd} (or run the same extract there once); copy that cache ($HF_HUB_CACHE, else $HF_HOME/hub, "
            "else ~/.cache/huggingface/hub) here if it is another machine, and set HF_HUB_OFFLINE=1 so it is used "
            "without network. Or pass --pretrained PATH to a local weights file."
        )
    if url:
        return (
            f"Download {url} into ~/.cache/clip on a machine with network (or run the same extract there once) "
            "and set HF_HUB_OFFLINE=1 so it is used without network, or pass --pretrained PATH to a local "
            "weights file. (No Hugging Face cache entry is known for these weights.)"
        )
    return "Pass --pretrained PATH to a local weights file; with it no network is needed (HF_HUB_OFFLINE=1)."
