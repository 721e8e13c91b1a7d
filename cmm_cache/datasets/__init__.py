"""Datasets resolved against a data root: image paths, labels, classes, templates.

`load_dataset(name_or_path, data_root=None, *, download=False, cache_root=None)`
accepts:

- a registered name or alias (`cmm-cache datasets`): the manifest's split
  source is resolved under ``<data root>/<folder>`` (CoOp layout);
- ``tiny``: a synthetic set generated once under ``<cache-dir>/data/tiny/``
  (needs no data root);
- a path to a manifest ``.json`` written by a user (same schema);
- an image folder: one sub-folder per class (or ``train/``, ``val/``,
  ``test/`` each holding one sub-folder per class);
- a ``.csv`` (or tab-separated ``.tsv``) file with rows ``path,label[,split]``
  (header optional; relative paths are resolved against the file's folder;
  label is a class name or an int).

Registered names win over a same-named folder in the working directory; write
``./dtd`` to mean the folder.

The package, one concern a module: `base` (the Dataset, shared helpers),
`registry` (split readers keyed by split-source kind, `load_dataset`), `coop`
(CoOp split sources), `imagenet` (ImageNet and its shift sets), `custom` (your
own folder / CSV), `tiny` (synthetic) and `download`.
"""

from .base import Dataset, LoadOptions, SplitList, split_method
from .custom import SPLIT_ALIASES, SPLIT_FRACTIONS, SPLIT_SEED, load_csv, load_folder
from .download import ARCHIVE_EXTS, DOWNLOAD_BASE_ENV, download, download_dataset
from .registry import SPLIT_READERS, load_dataset, load_manifest_dataset
from .tiny import TINY_VERSION, ensure_tiny

__all__ = [
    "ARCHIVE_EXTS",
    "DOWNLOAD_BASE_ENV",
    "SPLIT_ALIASES",
    "SPLIT_FRACTIONS",
    "SPLIT_READERS",
    "SPLIT_SEED",
    "TINY_VERSION",
    "Dataset",
    "LoadOptions",
    "SplitList",
    "download",
    "download_dataset",
    "ensure_tiny",
    "load_csv",
    "load_dataset",
    "load_folder",
    "load_manifest_dataset",
    "split_method",
]
