"""Where things live: data root, cache dir, cache files, runs.

Every function takes the explicit value a user gave (a CLI flag or a Python
argument) first and falls back to the environment, so the library and the CLI
resolve paths the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import CmmError

CACHE_SUFFIX = ".h5"


def data_root(explicit: str | os.PathLike | None = None, required: bool = False) -> Path | None:
    """`--data-root`, else `$CMM_DATA_ROOT`, else None (or an error if required)."""
    value = explicit if explicit not in (None, "") else os.environ.get("CMM_DATA_ROOT")
    if not value:
        if required:
            raise CmmError(
                "No data root given.",
                "Pass --data-root DIR or set CMM_DATA_ROOT to the folder that holds your "
                "datasets in the CoOp layout (see README, 'Data root').",
            )
        return None
    return Path(value).expanduser()


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`--cache-dir`, else `$CMM_CACHE_DIR`, else `$XDG_CACHE_HOME/cmm-cache`, else `~/.cache/cmm-cache`."""
    if explicit not in (None, ""):
        return Path(explicit).expanduser()
    if os.environ.get("CMM_CACHE_DIR"):
        return Path(os.environ["CMM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cmm-cache"
    return Path.home() / ".cache" / "cmm-cache"


def safe_name(name: str) -> str:
    """A dataset/backbone name usable as one path component (`ViT-B-32/openai` -> `ViT-B-32_openai`)."""
    return "".join(c if (c.isalnum() or c in "-_.+") else "_" for c in name)


def dataset_key(dataset: str) -> str:
    """The folder name of a dataset under the cache dir.

    A registered name or alias becomes the dataset's canonical name. A user's folder, CSV or manifest file
    (anything with a path separator or a file suffix) becomes
    `<its name>-<8 hex of its absolute path>`: short, readable, and two
    folders both called `images` do not share a cache.
    """
    looks_like_path = any(sep in dataset for sep in ("/", "\\")) or dataset.lower().endswith((".csv", ".json"))
    if not looks_like_path:
        from .manifests import resolve_name  # registered aliases share one folder: imagenet-sketch = imagenet_sketch

        return safe_name(resolve_name(dataset) or dataset)
    p = Path(dataset).expanduser().resolve()
    digest = hashlib.sha256(str(p).encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(p.stem or p.name or 'dataset')}-{digest}"


def cache_path(dataset: str, backbone: str, cache_root: str | os.PathLike | None = None) -> Path:
    """`<cache-dir>/<dataset>/<backbone>.h5` (DESIGN.md, cache schema)."""
    return cache_dir(cache_root) / dataset_key(dataset) / (safe_name(backbone) + CACHE_SUFFIX)


def runs_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """Fitted runs live beside the caches: `<cache-dir>/runs/`."""
    return cache_dir(cache_root) / "runs"


def _last_file(cache_root) -> Path:
    return cache_dir(cache_root) / "last_extract.json"


def record_last_extract(dataset: str, backbone: str, path: Path, cache_root=None) -> None:
    """Remember the cache written last, so `fit` without arguments can use it."""
    f = _last_file(cache_root)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dataset": dataset, "backbone": backbone, "path": str(path)}))
    os.replace(tmp, f)


def last_extract(cache_root=None) -> dict | None:
    """The record written by :func:`record_last_extract`, or None."""
    f = _last_file(cache_root)
    try:
        return json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
