"""Reading a cache: :func:`open_cache` and the read-only :class:`Cache` view every stage-two command uses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cmm_cache.cache.schema import (
    BLOCK_SUFFIX_GROUP,
    BLOCKS_GROUP,
    DAMAGED_HINT,
    SCHEMA,
    as_str,
    block_inputs_node,
    content_sha256,
    per_template_node,
    provenance_sha256,
    text_node,
)
from cmm_cache.datasets.fewshot import GROUP_RE, group_name, parse_group
from cmm_cache.errors import CmmError


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
    def content_sha256(self) -> str:
        """What the cache holds, not when it was written (:func:`~cmm_cache.cache.schema.content_sha256`)."""
        return content_sha256(self.provenance)

    @property
    def dataset_name(self) -> str:
        """The dataset's short name: the registered name, or your folder/CSV's name (``dtd10`` for
        ``extract --dataset path/to/dtd10``); the ``dataset`` attribute keeps the name as given."""
        return str(self.provenance.get("dataset_resolved") or self.dataset)

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
            with open_h5(self.path) as f:
                self._text_cache[name] = np.asarray(f[text_node(name)][...], dtype=np.float32)
        return self._text_cache[name]

    def has_per_template(self, name: str | None = None) -> bool:
        """Whether the optional ``text/<set>/per_template`` node exists (caches from cmm-cache >= 0.2)."""
        name = name or self.default_templates
        with open_h5(self.path) as f:
            return per_template_node(name) in f

    def text_per_template(self, name: str | None = None) -> np.ndarray:
        """Raw per-template text embeddings [C, M, d] float32 of template set `name` (optional node).

        Methods that use each template's embedding as a sample (cross-modal
        linear probing) need these; caches written before they existed lack them.
        """
        name = name or self.default_templates
        self.text(name)  # an unknown set gets its own clear message
        key = per_template_node(name)
        with open_h5(self.path) as f:
            if key not in f:
                raise CmmError(
                    f"Cache {self.path} has no per-template text embeddings ({key}): it was written by an "
                    "older cmm-cache or another tool.",
                    f"Add them with `cmm-cache extract --dataset {self.dataset} --backbone {self.backbone} "
                    f"--out {self.path} --add-text` (text encoder only, the image features are kept).",
                )
            try:
                return np.asarray(f[key][...], dtype=np.float32)
            except OSError as e:
                raise CmmError(
                    f"Cache {self.path} is damaged ({key}): {e}.",
                    DAMAGED_HINT,
                ) from e

    def templates(self, name: str | None = None) -> list[str]:
        name = name or self.default_templates
        with open_h5(self.path) as f:
            return json.loads(as_str(f[text_node(name)].attrs["templates"]))

    def split(self, name: str) -> Split:
        if name not in self.split_names:
            raise CmmError(
                f"Cache {self.path} has no '{name}' split.",
                f"It holds: {', '.join(self.split_names) or 'none'}.",
            )
        with open_h5(self.path) as f:
            g = f[f"splits/{name}"]
            try:
                feats = g["features"][...]
                labels = g["labels"][...].astype(np.int64)
                index = g["index"][...].astype(np.int64)
            except OSError as e:  # fletcher32 mismatch or a truncated file
                raise CmmError(
                    f"Cache {self.path} is damaged (split '{name}'): {e}.",
                    DAMAGED_HINT,
                ) from e
            views = json.loads(as_str(g["features"].attrs.get("views", '["center"]')))
        return Split(features=feats, labels=labels, index=index, views=views)

    def views(self, split: str = "train") -> list[str]:
        """The view names of a split's features (its ``views`` attr; ``["center"]`` when absent), features unread."""
        if split not in self.split_names:
            self.split(split)  # raises its clear error
        with open_h5(self.path) as f:
            return json.loads(as_str(f[f"splits/{split}/features"].attrs.get("views", '["center"]')))

    def view_recipe(self) -> dict | None:
        """How the augmented train views were made (attr ``view_recipe`` of the train features), if any."""
        with open_h5(self.path) as f:
            node = f.get("splits/train/features")
            raw = node.attrs.get("view_recipe") if node is not None else None
            return json.loads(as_str(raw)) if raw is not None else None

    # ---------------------------------------------------------------- block inputs (optional nodes)

    def has_blocks(self, split: str | None = None) -> bool:
        """Whether the cache holds the input of the image tower's last blocks (``extract --finetune-blocks``),
        for `split` or at all."""
        with open_h5(self.path) as f:
            if BLOCKS_GROUP not in f or "cut" not in f[BLOCKS_GROUP].attrs:
                return False
            return split is None or block_inputs_node(split) in f

    def blocks_hint(self) -> str:
        return (
            f"Extract the cache with block inputs: `cmm-cache extract --dataset {self.dataset} --backbone "
            f"{self.backbone} --finetune-blocks 1 --force` (1: the last block, as Lin et al.'s partial finetuning)."
        )

    def block_cut(self) -> dict:
        """The cut the block inputs come from: arch, blocks, input_shape, prefix/suffix sha256, config."""
        if not self.has_blocks():
            raise CmmError(f"Cache {self.path} holds no block inputs (blocks/, splits/<split>/block_inputs).",
                           self.blocks_hint())  # fmt: skip
        with open_h5(self.path) as f:
            try:
                cut = json.loads(as_str(f[BLOCKS_GROUP].attrs["cut"]))
            except (KeyError, json.JSONDecodeError) as e:
                msg = f"Cache {self.path}: blocks/ attribute cut is not valid JSON ({e})."
                raise CmmError(msg, DAMAGED_HINT) from e
        if not isinstance(cut, dict) or not isinstance(cut.get("config"), dict) or "input_shape" not in cut:
            raise CmmError(f"Cache {self.path}: blocks/ attribute cut lacks config or input_shape.", DAMAGED_HINT)
        return cut

    def block_weights(self) -> dict[str, np.ndarray]:
        """The weights above the cut, as extracted (float32, by name): where partial finetuning starts."""
        self.block_cut()
        with open_h5(self.path) as f:
            out = {}
            try:
                f[BLOCK_SUFFIX_GROUP].visititems(
                    lambda name, obj: (
                        out.__setitem__(name, np.asarray(obj[...], dtype=np.float32))
                        if isinstance(obj, h5py.Dataset)
                        else None
                    )
                )
            except (KeyError, OSError) as e:
                raise CmmError(f"Cache {self.path} is damaged ({BLOCK_SUFFIX_GROUP}): {e}.", DAMAGED_HINT) from e
        return out

    def block_views(self, split: str) -> list[str]:
        with open_h5(self.path) as f:
            return json.loads(as_str(f[block_inputs_node(split)].attrs.get("views", '["center"]')))

    def block_rows(self, split: str) -> int:
        with open_h5(self.path) as f:
            return int(f[block_inputs_node(split)].shape[0])

    def block_inputs(self, split: str, rows=None) -> np.ndarray:
        """float16 [m, Vb, *input_shape] block inputs of `split` (all rows, or `rows` in the order given)."""
        if not self.has_blocks(split):
            raise CmmError(f"Cache {self.path} holds no block inputs for split '{split}'.", self.blocks_hint())
        key = block_inputs_node(split)
        shape = [int(v) for v in self.block_cut()["input_shape"]]
        with open_h5(self.path) as f:
            d = f[key]
            if d.dtype != np.float16 or list(d.shape[2:]) != shape or d.ndim != 2 + len(shape):
                raise CmmError(
                    f"Cache {self.path}: {key} is {d.dtype} {list(d.shape)}, expected float16 [n, views, "
                    f"{', '.join(map(str, shape))}].",
                    DAMAGED_HINT,
                )
            try:
                if rows is None:
                    return d[...]
                rows = np.asarray(rows, dtype=np.int64)
                if rows.size and (rows.min() < 0 or rows.max() >= d.shape[0]):
                    raise CmmError(f"Cache {self.path}: rows outside {key} ({d.shape[0]} rows).", DAMAGED_HINT)
                uniq, inv = np.unique(rows, return_inverse=True)  # h5py reads increasing indices only
                return d[uniq][inv] if len(uniq) else np.zeros((0, *d.shape[1:]), d.dtype)
            except OSError as e:
                raise CmmError(f"Cache {self.path} is damaged ({key}): {e}.", DAMAGED_HINT) from e

    def iter_block_inputs(self, split: str, chunk: int = 256):
        """(start row, float16 [m, Vb, *shape]) chunks of a split's block inputs: memory stays flat."""
        n = self.block_rows(split) if self.has_blocks(split) else self.block_inputs(split).shape[0]
        key = block_inputs_node(split)
        with open_h5(self.path) as f:
            d = f[key]
            for a in range(0, n, chunk):
                try:
                    yield a, d[a : a + chunk]
                except OSError as e:
                    raise CmmError(f"Cache {self.path} is damaged ({key}): {e}.", DAMAGED_HINT) from e

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (train, val) into splits/train and splits/val for (K, seed)."""
        if (int(shots), int(seed)) not in self.fewshot_groups:
            have = ", ".join(f"{k}-shot/seed {s}" for k, s in self.fewshot_groups) or "none"
            raise CmmError(
                f"Cache {self.path} has no few-shot subset for {shots} shots, seed {seed}.",
                f"It holds: {have}. Re-run `cmm-cache extract` with --shots/--seeds covering it.",
            )
        with open_h5(self.path) as f:
            g = f[f"fewshot/{group_name(shots, seed)}"]
            rows = {part: g[part][...].astype(np.int64) for part in ("train", "val")}
            # Another tool may have written this file: never index past a split.
            for part, r in rows.items():
                n = f[f"splits/{part}/labels"].shape[0] if f"splits/{part}/labels" in f else 0
                if r.size and (r.min() < 0 or r.max() >= n):
                    raise CmmError(
                        f"Cache {self.path}: few-shot group {group_name(shots, seed)}/{part} points at "
                        f"rows outside splits/{part} ({n} rows).",
                        "The file does not follow the schema; run `cmm-cache cache verify` and re-extract it.",
                    )
            return rows["train"], rows["val"]


class open_h5:
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
    with open_h5(path) as f:
        schema = as_str(f.attrs.get("schema", ""))
        if schema != SCHEMA:
            raise CmmError(
                f"{path} is not a {SCHEMA} cache (schema attribute: {schema or 'missing'}).",
                "Only files written by `cmm-cache extract` or following docs/cache-schema.md can be read.",
            )
        try:
            prov_json = as_str(f.attrs.get("provenance", "{}"))
            provenance = json.loads(prov_json)
            names = [as_str(x) for x in f["classes/names"][...]]
            wnids = [as_str(x) for x in f["classes/wnids"][...]] if "classes/wnids" in f else None
            inet = f["classes/imagenet_index"][...].astype(np.int64) if "classes/imagenet_index" in f else None
            text_sets = sorted(f["text"].keys()) if "text" in f else []
            split_names = sorted(f["splits"].keys()) if "splits" in f else []
            groups = []
            for key in f["fewshot"].keys() if "fewshot" in f else []:
                if GROUP_RE.match(key):
                    groups.append(parse_group(key))
            default = as_str(f.attrs.get("default_templates", text_sets[0] if text_sets else ""))
            dataset = as_str(f.attrs["dataset"])
            backbone = as_str(f.attrs["backbone"])
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
