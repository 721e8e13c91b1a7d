"""Where things live: data root, cache dir, cache files, runs.

Every function takes the explicit value a user gave (a CLI flag or a Python
argument) first and falls back to the environment, so the library and the CLI
resolve paths the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmm_cache.errors import CmmError

# What counts as an image file wherever a folder is scanned (datasets, bench, predict).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# Files that describe a dataset of your own: a CSV/TSV/TXT list of images, or a manifest.
LIST_FILE_SUFFIXES = (".csv", ".tsv", ".txt")
MANIFEST_SUFFIX = ".json"
DATASET_FILE_SUFFIXES = (*LIST_FILE_SUFFIXES, MANIFEST_SUFFIX)


def is_image_file(name: str | os.PathLike) -> bool:
    """An image by its extension (hidden files excluded)."""
    base = os.path.basename(str(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


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


_cache_root = cache_dir  # for functions whose `cache_dir` parameter shadows the name


MAX_NAME_CHARS = 100  # a longer name is cut and ends in 8 hex digits of its sha256 (file systems cap names)


def safe_name(name: str) -> str:
    """A dataset/backbone/method name usable as one path component (`ViT-B-32/openai` -> `ViT-B-32_openai`).

    Only letters, digits and ``-_.+`` survive (separators become ``_``); a leading ``.`` becomes ``_``, so
    ``.``, ``..`` and hidden names never do (``..`` -> ``_.``); an empty name is ``_``; a very long one is cut.
    Names come from data (a cache's attributes, a result.json): never a step up or a hidden folder.
    """
    import hashlib

    name = str(name)
    s = "".join(c if (c.isalnum() or c in "-_.+") else "_" for c in name)
    if s.startswith("."):
        s = "_" + s[1:]
    if len(s) > MAX_NAME_CHARS:
        s = s[: MAX_NAME_CHARS - 9] + "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return s or "_"


def runs_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """Fitted runs live beside the caches: `<cache-dir>/runs/`."""
    return cache_dir(cache_root) / "runs"
