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

# What counts as an image file wherever a folder is scanned (datasets, bench, predict).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# Files that describe a dataset of your own: a CSV/TSV/TXT list of images, or a manifest.
DATASET_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".json")


def is_image_file(name: str | os.PathLike) -> bool:
    """An image by its extension (hidden files excluded)."""
    base = os.path.basename(str(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def is_user_data(dataset: str) -> bool:
    """Whether a `--dataset` value names your own data (a folder, CSV or manifest file) rather than a
    registered dataset: it has a path separator, starts with `.` or `~`, ends with a dataset-file suffix,
    or is no registered name but exists on disk. The one rule for loading and for the cache folder."""
    s = str(dataset)
    if any(sep in s for sep in ("/", "\\")) or s.startswith((".", "~")) or s.lower().endswith(DATASET_FILE_SUFFIXES):
        return True
    from .manifests import resolve_name

    return resolve_name(s) is None and Path(s).expanduser().exists()


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
    (see :func:`is_user_data`) becomes
    `<its name>-<8 hex of its absolute path>`: short, readable, and two
    folders both called `images` do not share a cache.
    """
    if not is_user_data(dataset):
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
    from .atomic import write_json

    write_json(_last_file(cache_root), {"dataset": dataset, "backbone": backbone, "path": str(path)})


def last_extract(cache_root=None) -> dict | None:
    """The record written by :func:`record_last_extract`, or None."""
    f = _last_file(cache_root)
    try:
        return json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
