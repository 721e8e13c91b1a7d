"""Where a backbone's weights come from: the one module that finds, downloads (or refuses fast) and fingerprints them.

Weights are resolved *before* open_clip is asked to build the model: a file already in the Hugging Face cache
(or open_clip's legacy ``~/.cache/clip``) is used directly, with no network; otherwise, when ``HF_HUB_OFFLINE`` is
set or the host cannot be reached within a few seconds, one :class:`CmmError` says what to do instead of a long
DNS wait. open_clip resolves a pretrained tag to a Hugging Face repo (and file) or a URL; the message for missing
weights names that repo and the command of the Hugging Face CLI that is actually installed (``hf`` in current
huggingface_hub).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from cmm_cache.backbones.registry import _PREPROCESS_KEYS, BackboneSpec, _registry
from cmm_cache.errors import CmmError


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
    """A TorchScript archive: a zip whose one top folder holds ``constants.pkl`` and a ``code/`` folder
    (what ``torch.jit.save`` writes; OpenAI's original CLIP ``.pt`` files are such archives)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    parts = [n.split("/") for n in names]
    consts = {p[0] for p in parts if len(p) == 2 and p[1] == "constants.pkl"}
    code = {p[0] for p in parts if len(p) > 2 and p[1] == "code"}
    return bool(consts & code)


def published_checksums() -> frozenset[str]:
    """The sha256 of OpenAI's original CLIP archives, as published: a path step of OpenAI's download URLs in
    open_clip's pretrained table (``.../clip/models/<sha256>/RN50.pt``)."""
    import open_clip

    out = set()
    for model, tag in open_clip.list_pretrained():
        url = (open_clip.get_pretrained_cfg(model, tag) or {}).get("url") or ""
        if "openaipublic" in url:
            parts = url.rstrip("/").split("/")
            if len(parts) >= 2 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
                out.add(parts[-2])
    return frozenset(out)


CONVERT_HINT = (
    "Convert it, on a machine and with code you trust, to a file that holds tensors only: a state_dict saved "
    "with `torch.save(model.state_dict(), 'weights.pt')`, or safetensors "
    "(`safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`), and pass that with --pretrained."
)


def code_needed_error(path, why: str) -> CmmError:
    """The refusal of a weights file that cannot be loaded without running code stored in it."""
    return CmmError(
        f"{path} cannot be loaded without running code stored in it ({why}); cmm-cache loads tensors only.",
        CONVERT_HINT,
    )


def weights_load_mode(path: str | os.PathLike, sha256: str) -> str:
    """How a weights file may be loaded: ``"tensors"`` (``torch.load(weights_only=True)`` or safetensors: no code
    runs) or ``"torchscript"`` (one of OpenAI's original archives, recognised by its published sha256).
    Any other TorchScript archive is refused (:func:`code_needed_error`)."""
    if _is_torchscript(str(path)):
        if sha256 in published_checksums():
            return "torchscript"
        raise code_needed_error(path, "a TorchScript archive whose sha256 is none of OpenAI's published checksums")
    return "tensors"


# ----------------------------------------------------------------------------
# The user's own record of local weights files


KNOWN_WEIGHTS_DIR = "known-weights"  # under the cache dir, private to the user (mode 0700)
_KNOWN_FILE = "local.json"
_KNOWN_MAX = 200


def _known() -> dict:
    from cmm_cache.util.paths import cache_dir
    from cmm_cache.util.private import NotPrivate, read_private_file

    folder = cache_dir() / KNOWN_WEIGHTS_DIR
    try:
        data = json.loads(read_private_file(folder, _KNOWN_FILE))
    except (NotPrivate, OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def remember_local_weights(path: str | os.PathLike, sha256: str) -> None:
    """Record that this user loaded the local weights file `path` (sha256): predict/export find it by the
    sha256 a run records, in this private record only (never a path written in a run folder). Best effort."""
    from cmm_cache.util.atomic import write_json
    from cmm_cache.util.private import NotPrivate, private_dir

    try:
        folder = private_dir(KNOWN_WEIGHTS_DIR)
        known = _known()
        known.pop(sha256, None)
        known[sha256] = str(Path(path).expanduser().resolve())
        write_json(folder / _KNOWN_FILE, dict(list(known.items())[-_KNOWN_MAX:]), indent=1)
        os.chmod(folder / _KNOWN_FILE, 0o600)
    except (NotPrivate, OSError, CmmError):
        pass


def known_local_weights(sha256: str) -> str | None:
    """The local weights file of that sha256 this user loaded before (from the private record), or None.
    The caller still checks the file's sha256 before loading it (it may have changed since)."""
    p = _known().get(sha256)
    return p if p and os.path.isfile(p) else None
