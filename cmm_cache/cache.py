"""The HDF5 feature cache, schema ``cmm-cache/1`` (see DESIGN.md).

This module owns the schema: node names, dtypes, the reader every stage-two
command uses, and a one-shot writer for features already in memory (used for
converting foreign feature files and by tests). The streaming, resumable writer
of ``extract`` builds on the same constants.

Layout of one file::

    attrs: schema, dataset, backbone, provenance (JSON), default_templates
    classes/names            str   [C]
    classes/wnids            str   [C]   ImageNet family only
    classes/imagenet_index   int64 [C]   shift sets only
    text/<set>/features      f32   [C, d]   attr templates (JSON list)
    splits/<split>/features  f16   [n, V, d] attr views (JSON list)
    splits/<split>/labels    int64 [n]
    splits/<split>/index     int64 [n]
    fewshot/shot_<K>-seed_<S>/train, /val   int64 row positions
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from .errors import CmmError

SCHEMA = "cmm-cache/1"
FEATURE_DTYPE = np.float16
TEXT_DTYPE = np.float32
INDEX_DTYPE = np.int64
FEWSHOT_RE = re.compile(r"^shot_(\d+)-seed_(\d+)$")

# Checksums (fletcher32) on every dataset so `cache verify` and any read detect
# a flipped byte; fletcher32 requires chunked storage, which h5py then picks.
DSET_KW = dict(fletcher32=True)


def string_array(values: Sequence[str]) -> np.ndarray:
    """Fixed-length UTF-8 strings: unlike variable-length ones they can carry a checksum."""
    encoded = [str(v).encode("utf-8") for v in values]
    width = max([len(b) for b in encoded] + [1])
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width))


def fewshot_group_name(shots: int, seed: int) -> str:
    return f"shot_{int(shots)}-seed_{int(seed)}"


def provenance_sha256(provenance_json: str) -> str:
    """The hash a run records to tie itself to the cache it was fitted on."""
    return hashlib.sha256(provenance_json.encode("utf-8")).hexdigest()


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass
class Split:
    """One split held in memory: features [n, V, d] (float16), labels, index, views."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    views: list[str]


@dataclass
class Cache:
    """A read-only view of one cache file.

    Attributes are read eagerly (they are small); features are read on demand
    by :meth:`split` so a large test split is only loaded when needed.
    """

    path: Path
    dataset: str
    backbone: str
    provenance: dict
    provenance_json: str
    default_templates: str
    classnames: list[str]
    wnids: list[str] | None
    imagenet_index: np.ndarray | None
    text_sets: list[str]
    split_names: list[str]
    fewshot_groups: list[tuple[int, int]]
    _text_cache: dict = field(default_factory=dict, repr=False)

    @property
    def provenance_sha256(self) -> str:
        return provenance_sha256(self.provenance_json)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def embed_dim(self) -> int:
        return int(self.text().shape[1])

    @property
    def is_shift(self) -> bool:
        return self.imagenet_index is not None

    def text(self, name: str | None = None) -> np.ndarray:
        """Class text features [C, d] float32 of template set `name` (default set if None)."""
        name = name or self.default_templates
        if name not in self.text_sets:
            raise CmmError(
                f"Cache {self.path} has no text features for template set '{name}'.",
                f"Available template sets: {', '.join(self.text_sets)}.",
            )
        if name not in self._text_cache:
            with _open(self.path) as f:
                self._text_cache[name] = np.asarray(f[f"text/{name}/features"][...], dtype=np.float32)
        return self._text_cache[name]

    def templates(self, name: str | None = None) -> list[str]:
        name = name or self.default_templates
        with _open(self.path) as f:
            return json.loads(_str(f[f"text/{name}/features"].attrs["templates"]))

    def split(self, name: str) -> Split:
        if name not in self.split_names:
            raise CmmError(
                f"Cache {self.path} has no '{name}' split.",
                f"It holds: {', '.join(self.split_names) or 'none'}.",
            )
        with _open(self.path) as f:
            g = f[f"splits/{name}"]
            try:
                feats = g["features"][...]
                labels = g["labels"][...].astype(np.int64)
                index = g["index"][...].astype(np.int64)
            except OSError as e:  # fletcher32 mismatch or a truncated file
                raise CmmError(
                    f"Cache {self.path} is damaged (split '{name}'): {e}.",
                    "Run `cmm-cache cache verify` and re-extract it with `cmm-cache extract --force`.",
                ) from e
            views = json.loads(_str(g["features"].attrs.get("views", '["center"]')))
        return Split(features=feats, labels=labels, index=index, views=views)

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (train, val) into splits/train and splits/val for (K, seed)."""
        if (int(shots), int(seed)) not in self.fewshot_groups:
            have = ", ".join(f"{k}-shot/seed {s}" for k, s in self.fewshot_groups) or "none"
            raise CmmError(
                f"Cache {self.path} has no few-shot subset for {shots} shots, seed {seed}.",
                f"It holds: {have}. Re-run `cmm-cache extract` with --shots/--seeds covering it.",
            )
        with _open(self.path) as f:
            g = f[f"fewshot/{fewshot_group_name(shots, seed)}"]
            return g["train"][...].astype(np.int64), g["val"][...].astype(np.int64)


class _open:
    """h5py.File opened read-only with errors turned into one clear message."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> h5py.File:
        if not self.path.exists():
            raise CmmError(
                f"No cache file at {self.path}.",
                "Run `cmm-cache extract --dataset NAME --backbone NAME` first, or pass --cache PATH.",
            )
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise CmmError(
                f"Cannot read {self.path} as an HDF5 cache ({e}).",
                "The file is damaged or not a cmm-cache file; re-extract it with `cmm-cache extract --force`.",
            ) from e
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        return False


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a schema-conformant cache file; refuse anything else with a clear message."""
    path = Path(path)
    with _open(path) as f:
        schema = _str(f.attrs.get("schema", ""))
        if schema != SCHEMA:
            raise CmmError(
                f"{path} is not a {SCHEMA} cache (schema attribute: {schema or 'missing'}).",
                "Only files written by `cmm-cache extract` (or another tool following DESIGN.md's schema) can be read.",
            )
        try:
            prov_json = _str(f.attrs.get("provenance", "{}"))
            provenance = json.loads(prov_json)
            names = [_str(x) for x in f["classes/names"][...]]
            wnids = [_str(x) for x in f["classes/wnids"][...]] if "classes/wnids" in f else None
            inet = f["classes/imagenet_index"][...].astype(np.int64) if "classes/imagenet_index" in f else None
            text_sets = sorted(f["text"].keys()) if "text" in f else []
            split_names = sorted(f["splits"].keys()) if "splits" in f else []
            groups = []
            for key in f["fewshot"].keys() if "fewshot" in f else []:
                m = FEWSHOT_RE.match(key)
                if m:
                    groups.append((int(m.group(1)), int(m.group(2))))
            default = _str(f.attrs.get("default_templates", text_sets[0] if text_sets else ""))
            dataset = _str(f.attrs["dataset"])
            backbone = _str(f.attrs["backbone"])
        except (KeyError, OSError, json.JSONDecodeError) as e:
            raise CmmError(
                f"{path} does not follow schema {SCHEMA}: {e}.",
                "Re-extract it with `cmm-cache extract --force`.",
            ) from e
    if not text_sets:
        raise CmmError(f"{path} has no text features (text/<set>/features).", "Re-extract it.")
    return Cache(
        path=path,
        dataset=dataset,
        backbone=backbone,
        provenance=provenance,
        provenance_json=prov_json,
        default_templates=default,
        classnames=names,
        wnids=wnids,
        imagenet_index=inet,
        text_sets=text_sets,
        split_names=split_names,
        fewshot_groups=sorted(groups),
    )


def write_cache(
    path: str | os.PathLike,
    *,
    dataset: str,
    backbone: str,
    provenance: Mapping,
    classnames: Sequence[str],
    text: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    default_templates: str,
    splits: Mapping[str, Split],
    fewshot: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    wnids: Sequence[str] | None = None,
    imagenet_index: Sequence[int] | None = None,
) -> Path:
    """Write a whole cache from arrays in memory, atomically (temp file + rename).

    `text` maps set name -> (features [C, d], templates); `splits` maps split
    name -> :class:`Split`; `fewshot` maps (K, seed) -> (train rows, val rows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["dataset"] = dataset
            f.attrs["backbone"] = backbone
            f.attrs["provenance"] = json.dumps(dict(provenance), sort_keys=True)
            f.attrs["default_templates"] = default_templates
            f.create_dataset("classes/names", data=string_array(classnames), **DSET_KW)
            if wnids is not None:
                f.create_dataset("classes/wnids", data=string_array(wnids), **DSET_KW)
            if imagenet_index is not None:
                f.create_dataset("classes/imagenet_index", data=np.asarray(imagenet_index, dtype=INDEX_DTYPE), **DSET_KW)
            for name, (feats, templates) in text.items():
                d = f.create_dataset(f"text/{name}/features", data=np.asarray(feats, dtype=TEXT_DTYPE), **DSET_KW)
                d.attrs["templates"] = json.dumps(list(templates))
            for name, s in splits.items():
                feats = np.asarray(s.features, dtype=FEATURE_DTYPE)
                if feats.ndim != 3:
                    raise ValueError(f"split {name}: features must be [n, V, d], got {feats.shape}")
                d = f.create_dataset(f"splits/{name}/features", data=feats, **DSET_KW)
                d.attrs["views"] = json.dumps(list(s.views))
                f.create_dataset(f"splits/{name}/labels", data=np.asarray(s.labels, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"splits/{name}/index", data=np.asarray(s.index, dtype=INDEX_DTYPE), **DSET_KW)
            for (k, seed), (tr, va) in (fewshot or {}).items():
                g = f"fewshot/{fewshot_group_name(k, seed)}"
                f.create_dataset(f"{g}/train", data=np.asarray(tr, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"{g}/val", data=np.asarray(va, dtype=INDEX_DTYPE), **DSET_KW)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
