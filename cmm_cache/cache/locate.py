"""Finding a cache file: where ``extract`` writes ``(dataset, backbone)`` and what a stage-two command reads.

``<cache-dir>/<dataset key>/<backbone>.h5`` (:func:`cache_path`); :func:`find_cache` also resolves your own
data's short name (``dtd10`` for ``path/to/dtd10``) and says what to run when nothing was extracted. The
"extracted last" record lets ``fit`` without arguments use the cache written last.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cmm_cache.datasets.manifests import resolve_name
from cmm_cache.datasets.names import dataset_key, is_user_data, user_data_name
from cmm_cache.errors import CmmError
from cmm_cache.util.atomic import write_json
from cmm_cache.util.paths import cache_dir, safe_name

_cache_root = cache_dir  # for functions whose `cache_dir` parameter shadows the name


CACHE_SUFFIX = ".h5"


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


def _last_file(cache_root) -> Path:
    return cache_dir(cache_root) / "last_extract.json"


def record_last_extract(dataset: str, backbone: str, path: Path, cache_root=None) -> None:
    """Remember the cache written last, so `fit` without arguments can use it."""

    write_json(_last_file(cache_root), {"dataset": dataset, "backbone": backbone, "path": str(path)})


def last_extract(cache_root=None) -> dict | None:
    """The record written by :func:`record_last_extract`, or None."""
    f = _last_file(cache_root)
    try:
        return json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
