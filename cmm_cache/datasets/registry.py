"""From a name or a path to a Dataset: the split readers keyed by split-source kind, and `load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmm_cache.datasets import coop, imagenet
from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import (
    Dataset,
    LoadOptions,
    RelLists,
    SplitList,
    folder_missing,
    get_hint,
    indent,
    make_dataset,
)
from cmm_cache.datasets.custom import SPLIT_SEED, load_csv, load_custom_manifest, load_folder
from cmm_cache.datasets.download import download_dataset
from cmm_cache.datasets.fewshot import load_published
from cmm_cache.datasets.names import is_user_data
from cmm_cache.datasets.tiny import load_tiny
from cmm_cache.errors import CmmError
from cmm_cache.util import paths as _paths
from cmm_cache.util.paths import LIST_FILE_SUFFIXES, MANIFEST_SUFFIX

# The 11 datasets of the paper's Table 1 (CoOp's few-shot benchmark), in the order papers list them:
# `benchmark --datasets paper` runs them, `report` orders its tables by them.
PAPER_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)

Loader = Callable[[dict, LoadOptions], Dataset]
RootedReader = Callable[[dict, Path], tuple[RelLists, dict]]


def _need_root(m: dict, data_root) -> Path:
    root = _paths.data_root(data_root)
    if root is None:
        raise CmmError(
            f"Dataset '{m['name']}' is read from a data root, and none was given.",
            f"Pass --data-root DIR or set CMM_DATA_ROOT (Python: data_root=...) to the folder that holds "
            f"'{m['folder']}/':\n{indent(m['layout'])}\n{get_hint(m)}",
        )
    return Path(os.path.abspath(root))  # split paths are absolute even for a relative --data-root


def _rooted(reader: RootedReader) -> Loader:
    """A loader for a split source read from `<data root>/<folder>`: resolve the folder (downloading it if asked),
    read the split lists, check their sizes, attach the published few-shot indices."""

    def load(m: dict, opts: LoadOptions) -> Dataset:
        root = _need_root(m, opts.data_root)
        folder = root / m["folder"]
        if opts.download and not (folder / m.get("image_dir", "")).exists():
            download_dataset(m, root)
        if not folder.is_dir():
            raise folder_missing(m, folder)
        rel, bases = reader(m, folder)
        warnings = [
            f"{m['name']}: split '{s}' has {len(rel[s][0])} images; the manifest expects {n}."
            for s, n in (m.get("split_sizes") or {}).items()
            if s in rel and len(rel[s][0]) != n
        ]
        default_base = folder / m.get("image_dir", "")
        splits = {
            s: SplitList([os.path.join(str(bases.get(s, default_base)), x) for x in r], np.asarray(lab, dtype=np.int64))
            for s, (r, lab) in rel.items()
        }
        fs = m.get("fewshot")
        published = load_published(_mf.data_file(m, fs["file"])) if fs and fs.get("file") else {}
        return make_dataset(m, splits, rel, folder, m.get("layout", ""), get_hint(m), published, warnings)

    return load


# One loader per split-source kind (the kinds and what they mean: `manifests.SPLIT_SOURCES`).
SPLIT_READERS: dict[str, Loader] = {
    "shipped": _rooted(coop.read_shipped),
    "coop_split_file": _rooted(coop.read_coop_split_file),
    "fgvc_variant_files": _rooted(coop.read_fgvc),
    "imagenet": _rooted(imagenet.read_imagenet),
    "class_folders": _rooted(imagenet.read_class_folders),
    "synthetic": load_tiny,
    "image_folder": load_custom_manifest,
    "csv": load_custom_manifest,
}


def load_manifest_dataset(m: dict, data_root=None, *, download: bool = False, cache_root=None) -> Dataset:
    """A Dataset from a validated manifest (registered or user-written)."""
    kind = m["split_source"]["type"]
    if kind not in SPLIT_READERS:  # validate_manifest rejects unknown kinds; this is a missing reader
        raise CmmError(f"No reader for split source {kind!r} (known: {', '.join(SPLIT_READERS)}).")
    return SPLIT_READERS[kind](m, LoadOptions(data_root=data_root, download=download, cache_root=cache_root))


def load_dataset(
    name_or_path: str,
    data_root=None,
    *,
    download: bool = False,
    cache_root=None,
    classnames_file=None,
    split_seed: int = SPLIT_SEED,
) -> Dataset:
    """Resolve a registered name/alias, a manifest file, an image folder or a CSV/TSV into a Dataset.

    Whether the value is a path is :func:`cmm_cache.datasets.names.is_user_data` (the rule the cache folder uses too).
    """
    s = str(name_or_path)
    if not is_user_data(s):  # a registered name or alias (else the 'unknown dataset' error listing the valid names)
        return load_manifest_dataset(_mf.get_manifest(s), data_root, download=download, cache_root=cache_root)
    p = Path(s).expanduser()
    suffix = p.suffix.lower()
    if p.is_dir():
        return load_folder(p, classnames_file, split_seed)
    if p.is_file() and suffix == MANIFEST_SUFFIX:
        return load_manifest_dataset(_mf.load_manifest_file(p), data_root, download=download, cache_root=cache_root)
    if p.is_file() and suffix in LIST_FILE_SUFFIXES:
        return load_csv(p, classnames_file, split_seed)
    if p.is_file():
        raise CmmError(
            f"{p} is neither an image folder, a CSV/TSV list ({', '.join(LIST_FILE_SUFFIXES)}) nor a manifest "
            f"({MANIFEST_SUFFIX}).",
            "Give a registered dataset name, an image folder, a .csv or a manifest .json.",
        )
    raise CmmError(
        f"Dataset path not found: {p}",
        "Give a registered dataset name, an image folder, a .csv or a manifest .json.",
    )
