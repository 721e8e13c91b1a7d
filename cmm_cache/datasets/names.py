"""The names a dataset goes by: a registered name or alias, or your own folder / CSV / manifest and its short name.

One rule decides whether a ``--dataset`` value is your own data (:func:`is_user_data`), what it is called in
tables (:func:`user_data_name`) and the folder it gets under the cache dir and the runs root (:func:`dataset_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cmm_cache.datasets.manifests import resolve_name
from cmm_cache.util.paths import DATASET_FILE_SUFFIXES, MANIFEST_SUFFIX, safe_name


def is_user_data(dataset: str) -> bool:
    """Whether a `--dataset` value names your own data (a folder, CSV or manifest file) rather than a
    registered dataset: it has a path separator, starts with `.` or `~`, ends with a dataset-file suffix,
    or is no registered name but exists on disk. The one rule for loading and for the cache folder."""
    s = str(dataset)
    if any(sep in s for sep in ("/", "\\")) or s.startswith((".", "~")) or s.lower().endswith(DATASET_FILE_SUFFIXES):
        return True

    return resolve_name(s) is None and Path(s).expanduser().exists()


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
        return safe_name(resolve_name(dataset) or dataset)
    p = Path(dataset).expanduser().resolve()
    digest = hashlib.sha256(str(p).encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(user_data_name(p))}-{digest}"


def display_name(dataset: str | os.PathLike) -> str:
    """The name a dataset is shown by: your own data's short name (``dtd10`` for ``path/to/dtd10``, see
    :func:`user_data_name`), else the name as given (a registered name or alias)."""
    return user_data_name(dataset) if is_user_data(str(dataset)) else str(dataset)
