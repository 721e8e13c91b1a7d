"""Where things live: data root, cache dir, cache files, runs.

Every function takes the explicit value a user gave (a CLI flag or a Python
argument) first and falls back to the environment, so the library and the CLI
resolve paths the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .errors import CmmError

CACHE_SUFFIX = ".h5"

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


_cache_root = cache_dir  # for functions whose `cache_dir` parameter shadows the name


def safe_name(name: str) -> str:
    """A dataset/backbone name usable as one path component (`ViT-B-32/openai` -> `ViT-B-32_openai`)."""
    return "".join(c if (c.isalnum() or c in "-_.+") else "_" for c in name)


def user_data_name(dataset: str | os.PathLike) -> str:
    """The short name of your own folder, CSV or manifest: the folder's name, the list file's stem
    (``dtd10`` for ``path/to/dtd10`` or ``dtd10.csv``), or the ``name`` a manifest ``.json`` gives.
    The dataset goes by this name in tables and results (`Dataset.name`) and its cache folder starts with it."""
    p = Path(dataset).expanduser().resolve()
    suffix = p.suffix.lower()
    if suffix == MANIFEST_SUFFIX and p.is_file():
        try:
            name = json.loads(p.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name.strip():
            return name
    if suffix in DATASET_FILE_SUFFIXES and not p.is_dir():
        return p.stem or p.name or "dataset"
    return p.name or "dataset"


def dataset_key(dataset: str) -> str:
    """The folder name of a dataset under the cache dir.

    A registered name or alias becomes the dataset's canonical name. A user's folder, CSV or manifest file
    (see :func:`is_user_data`) becomes `<its short name>-<8 hex of its absolute path>`
    (:func:`user_data_name`): short, readable, and two folders both called `images` do not share a cache.
    """
    if not is_user_data(dataset):
        from .manifests import resolve_name  # registered aliases share one folder: imagenet-sketch = imagenet_sketch

        return safe_name(resolve_name(dataset) or dataset)
    p = Path(dataset).expanduser().resolve()
    digest = hashlib.sha256(str(p).encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(user_data_name(p))}-{digest}"


def cache_path(dataset: str, backbone: str, cache_root: str | os.PathLike | None = None) -> Path:
    """`<cache-dir>/<dataset key>/<backbone>.h5` (the path `extract` writes; see :func:`find_cache` to read)."""
    return cache_dir(cache_root) / dataset_key(dataset) / (safe_name(backbone) + CACHE_SUFFIX)


def dataset_caches(dataset: str, cache_root: str | os.PathLike | None = None) -> list[Path]:
    """Every cache file of datasets going by `dataset`'s name (for messages and lookups), sorted.

    A registered name or alias: the files in its folder. Your own data (a path) or a bare short name such as
    ``dtd10``: the files in every ``<name>-<8 hex>`` folder (each is a folder or CSV of that name somewhere on
    disk) and in a plain ``<name>`` folder (a cache written for a Dataset object by that name).
    """
    root = cache_dir(cache_root)
    if not is_user_data(dataset):
        from .manifests import resolve_name

        if resolve_name(dataset) is not None:
            return sorted((root / dataset_key(dataset)).glob("*" + CACHE_SUFFIX))
        name = safe_name(dataset)
    else:
        name = safe_name(user_data_name(dataset))
    keyed = re.compile(re.escape(name) + r"(-[0-9a-f]{8})?")
    if not root.is_dir():
        return []
    folders = sorted(d for d in root.iterdir() if d.is_dir() and keyed.fullmatch(d.name))
    return [f for d in folders for f in sorted(d.glob("*" + CACHE_SUFFIX)) if f.is_file()]


def _described(files: list[Path], root: Path) -> str:
    """One line per cache file: its path under the cache dir and the --dataset value it was extracted with."""
    lines = []
    for f in files:
        src = _recorded_dataset(f)
        lines.append(f"  {f.relative_to(root)}" + (f"  (extracted with --dataset {src})" if src else ""))
    return "\n".join(lines)


def _recorded_dataset(f: Path) -> str | None:
    try:
        import h5py

        with h5py.File(f, "r") as h:
            value = h.attrs.get("dataset")
        return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
    except Exception:  # a message helper: an unreadable file just goes without its source
        return None


def find_cache(dataset: str, backbone: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file a stage-two command reads for `--dataset DATASET --backbone BACKBONE`.

    - a registered name or alias: ``<cache-dir>/<name>/<backbone>.h5``;
    - a path to your own folder, CSV or manifest: its keyed folder ``<name>-<8 hex of the path>`` (as `extract`
      wrote it);
    - a bare short name that is not registered (``dtd10`` after ``extract --dataset path/to/dtd10``): the one
      ``dtd10-*`` folder holding that backbone's cache.

    Raises CmmError when there is no such cache (saying what to run) or when a short name fits several caches
    (listing them, with the --dataset each was extracted with).
    """
    root = _cache_root(cache_dir)
    direct = cache_path(dataset, backbone, root)
    if direct.is_file():
        return direct
    from .manifests import resolve_name

    bare = not is_user_data(dataset) and resolve_name(dataset) is None
    others = dataset_caches(dataset, root)
    if bare:
        fits = [f for f in others if f.name == safe_name(backbone) + CACHE_SUFFIX]
        if len(fits) == 1:
            return fits[0]
        if fits:
            raise CmmError(
                f"{len(fits)} caches of datasets named '{dataset}' hold backbone '{backbone}':\n"
                + _described(fits, root),
                "Pass the path you extracted (--dataset PATH) or the file itself (--cache FILE).",
            )
    message = f"No cache of dataset '{dataset}' with backbone '{backbone}' in {root}"
    if bare:
        message += f"; '{dataset}' is not a registered dataset (`cmm-cache datasets` lists them)."
        hint = (
            f"For your own images run `cmm-cache extract --dataset PATH/TO/{dataset} --backbone {backbone}` first "
            f"(the folder or CSV); later commands accept its short name '{dataset}'."
        )
    else:
        message += f" (looked for {direct.relative_to(root)})."
        hint = f"Run `cmm-cache extract --dataset {dataset} --backbone {backbone}` first."
    if others:
        hint = f"Caches of '{dataset}' in {root}:\n{_described(others, root)}\n" + hint
    raise CmmError(message, hint)


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
