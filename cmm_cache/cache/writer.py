"""Writing caches, always temp file then rename (:mod:`cmm_cache.util.atomic`).

- :func:`write_cache`: a whole cache from arrays in memory (converting foreign
  feature files, tests);
- :func:`assemble_cache`: the streaming end of ``extract``, from the chunk
  files of its work folder (:mod:`.partial`) into one file, memory flat;
- :func:`add_text_nodes`: a copy of an existing cache plus new text nodes
  (``extract --add-text``), image features byte for byte as they were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from cmm_cache.cache.lock import no_readers
from cmm_cache.cache.partial import PartialStore, SplitPlan
from cmm_cache.cache.reader import Split
from cmm_cache.cache.schema import (
    BLOCK_SUFFIX_GROUP,
    BLOCKS_GROUP,
    DSET_KW,
    FEATURE_DTYPE,
    INDEX_DTYPE,
    SCHEMA,
    TEXT_DTYPE,
    block_chunk_rows,
    block_inputs_node,
    per_template_node,
    string_array,
    text_node,
)
from cmm_cache.datasets.fewshot import group_name
from cmm_cache.errors import CmmError
from cmm_cache.util.atomic import TMP_MARK, atomic_path

FewshotRows = Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]]


def _write_header(
    f: h5py.File, dataset, backbone, provenance, default_templates, classnames, wnids, imagenet_index, text
) -> None:
    """Root attributes, classes/ and text/: the part of the schema every writer shares."""
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
    for name, entry in text.items():
        feats, templates = entry[0], entry[1]
        d = f.create_dataset(text_node(name), data=np.asarray(feats, dtype=TEXT_DTYPE), **DSET_KW)
        d.attrs["templates"] = json.dumps(list(templates))
        if len(entry) > 2 and entry[2] is not None:
            _write_per_template(f, name, entry[2], len(templates))


def _write_per_template(f: h5py.File, name: str, per_template, n_templates: int) -> h5py.Dataset:
    per_template = np.asarray(per_template, dtype=TEXT_DTYPE)
    if per_template.ndim != 3 or per_template.shape[1] != n_templates:
        raise ValueError(f"text set {name}: per_template must be [C, {n_templates}, d], got {per_template.shape}")
    return f.create_dataset(per_template_node(name), data=per_template, **DSET_KW)


def _write_index(f: h5py.File, node: str, values) -> None:
    """An int64 vector, chunked so an empty one (a split with every image skipped) is valid too."""
    values = np.asarray(values, dtype=INDEX_DTYPE)
    f.create_dataset(node, data=values, maxshape=(None,), chunks=(max(1, min(len(values), 65536)),), **DSET_KW)


def write_cache(
    path: str | os.PathLike,
    *,
    dataset: str,
    backbone: str,
    provenance: Mapping,
    classnames: Sequence[str],
    text: Mapping[str, tuple],
    default_templates: str,
    splits: Mapping[str, Split],
    fewshot: FewshotRows | None = None,
    wnids: Sequence[str] | None = None,
    imagenet_index: Sequence[int] | None = None,
) -> Path:
    """Write a whole cache from arrays in memory, atomically (temp file + rename).

    `text` maps set name -> (features [C, d], templates[, per_template [C, M, d]]); `splits` maps split
    name -> :class:`Split`; `fewshot` maps (K, seed) -> (train rows, val rows).
    """
    path = Path(path)
    with atomic_path(path, replace_guard=lambda: no_readers(path)) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_header(f, dataset, backbone, provenance, default_templates, classnames, wnids, imagenet_index, text)
            for name, s in splits.items():
                feats = np.asarray(s.features, dtype=FEATURE_DTYPE)
                if feats.ndim != 3:
                    raise ValueError(f"split {name}: features must be [n, V, d], got {feats.shape}")
                d = f.create_dataset(f"splits/{name}/features", data=feats, **DSET_KW)
                d.attrs["views"] = json.dumps(list(s.views))
                f.create_dataset(f"splits/{name}/labels", data=np.asarray(s.labels, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"splits/{name}/index", data=np.asarray(s.index, dtype=INDEX_DTYPE), **DSET_KW)
            for (k, seed), (tr, va) in (fewshot or {}).items():
                g = f"fewshot/{group_name(k, seed)}"
                f.create_dataset(f"{g}/train", data=np.asarray(tr, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"{g}/val", data=np.asarray(va, dtype=INDEX_DTYPE), **DSET_KW)
    return path


def write_block_nodes(
    path: str | os.PathLike, inputs: Mapping[str, tuple], cut: Mapping, weights: Mapping[str, np.ndarray]
) -> Path:
    """Give a cache written from memory (:func:`write_cache`) block inputs, atomically: `inputs` maps split ->
    (float16 [n, Vb, *shape], view names); `cut` and `weights` as ``extract --finetune-blocks`` records them."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                src.copy(src[name], dst, name=name)
            for split, (arr, views) in inputs.items():
                arr = np.asarray(arr, dtype=FEATURE_DTYPE)
                d = _create_block_inputs(dst, split, len(arr), views, cut["input_shape"])
                d[...] = arr
            write_block_weights(dst, cut, weights)
    return path


# --------------------------------------------------------------------------- streaming from the work folder


def _kept_rows(store: PartialStore, sp: SplitPlan, paths: Sequence[str] | None) -> tuple[np.ndarray, list[dict]]:
    """(mask of the rows whose image was read, skipped-image records) from the chunks' small flag arrays."""
    mask = np.ones(sp.n, dtype=bool)
    skipped = []
    for c in range(sp.num_chunks):
        a, b = sp.chunk_range(c)
        ok, errs = store.load_flags(sp.name, c)
        if len(ok) != b - a:
            raise CmmError(
                f"Chunk {sp.name}.{c} of {store.dir} has {len(ok)} rows, expected {b - a}.", "Re-run with --force."
            )
        mask[a:b] = ok
        for i in np.flatnonzero(~ok):
            row = int(sp.rows[a + i])
            skipped.append(
                {
                    "split": sp.name,
                    "row": row,
                    "path": str(paths[row]) if paths is not None else None,
                    "error": errs[i] if i < len(errs) else None,
                }
            )
    return mask, skipped


def _create_block_inputs(f: h5py.File, split: str, n: int, views: Sequence[str], shape: Sequence[int]) -> h5py.Dataset:
    """An empty ``splits/<split>/block_inputs`` [n, Vb, *shape] float16, chunked by whole rows (about 1 MiB)."""
    row = (len(views), *[int(v) for v in shape])
    d = f.create_dataset(
        block_inputs_node(split),
        shape=(n, *row),
        maxshape=(None, *row),
        chunks=(max(1, min(max(n, 1), block_chunk_rows(row))), *row),
        dtype=FEATURE_DTYPE,
        **DSET_KW,
    )
    d.attrs["views"] = json.dumps(list(views))
    return d


def write_block_weights(f: h5py.File, cut: Mapping, weights: Mapping[str, np.ndarray]) -> None:
    """The ``blocks`` group: attr ``cut`` (JSON) and the initial weights above the cut, float32 by name."""
    g = f.require_group(BLOCKS_GROUP)
    g.attrs["cut"] = json.dumps(dict(cut), sort_keys=True)
    for k, v in weights.items():
        f.create_dataset(f"{BLOCK_SUFFIX_GROUP}/{k}", data=np.asarray(v, dtype=np.float32), **DSET_KW)


def _stream_split(
    f: h5py.File, store: PartialStore, sp: SplitPlan, mask: np.ndarray, embed_dim: int, block_shape=None, attrs=None
) -> None:
    """splits/<name>/{features,labels,index} (and block_inputs) of the kept rows, one chunk file in memory at a time."""
    n_keep, V = int(mask.sum()), len(sp.views)
    d = f.create_dataset(
        f"splits/{sp.name}/features",
        shape=(n_keep, V, embed_dim),
        maxshape=(None, V, embed_dim),
        chunks=(max(1, min(n_keep, 1024)), V, embed_dim),
        dtype=FEATURE_DTYPE,
        **DSET_KW,
    )
    d.attrs["views"] = json.dumps(list(sp.views))
    for k, v in (attrs or {}).items():
        d.attrs[k] = json.dumps(v, sort_keys=True)
    blocks = None
    if block_shape is not None and sp.block_views:
        blocks = _create_block_inputs(f, sp.name, n_keep, sp.views[: sp.block_views], block_shape)
    o = 0
    for c in range(sp.num_chunks):
        feats, ok, _ = store.load_chunk(sp.name, c)
        if feats.shape[1:] != (V, embed_dim):
            raise CmmError(
                f"Chunk {sp.name}.{c} has shape {feats.shape}, expected [*, {V}, {embed_dim}].", "Re-run with --force."
            )
        feats = feats[ok]
        d[o : o + len(feats)] = feats
        if blocks is not None:
            b = store.load_blocks(sp.name, c)
            if b.shape[1:] != blocks.shape[1:]:
                raise CmmError(
                    f"Chunk {sp.name}.{c} has block inputs {b.shape}, expected [*, {blocks.shape[1:]}].",
                    "Re-run with --force.",
                )
            blocks[o : o + len(feats)] = b[ok]
        o += len(feats)
    _write_index(f, f"splits/{sp.name}/labels", sp.labels[mask])
    _write_index(f, f"splits/{sp.name}/index", sp.rows[mask])


def _write_fewshot(f: h5py.File, fewshot: FewshotRows, keep: Mapping[str, np.ndarray]) -> None:
    """Few-shot positions remapped to the kept rows (a skipped image leaves its subsets)."""
    remap = {}
    for name, mask in keep.items():
        m = np.full(len(mask), -1, dtype=np.int64)
        m[mask] = np.arange(int(mask.sum()))
        remap[name] = m
    for (k, seed), (tr, va) in sorted(fewshot.items()):
        for part, pos in (("train", tr), ("val", va)):
            pos = np.asarray(pos, dtype=np.int64)
            if part in remap:
                pos = remap[part][pos]
                pos = pos[pos >= 0]
            _write_index(f, f"fewshot/{group_name(k, seed)}/{part}", pos)


def assemble_cache(
    final: str | os.PathLike,
    store: PartialStore,
    *,
    dataset: str,
    backbone: str,
    provenance: dict,
    classnames: Sequence[str],
    text: Mapping[str, tuple],
    default_templates: str,
    splits: Sequence[SplitPlan],
    embed_dim: int,
    fewshot: FewshotRows | None = None,
    wnids: Sequence[str] | None = None,
    imagenet_index: Sequence[int] | None = None,
    paths: Mapping[str, Sequence[str]] | None = None,
    view_recipe: Mapping | None = None,
    cut: Mapping | None = None,
    block_weights: Mapping[str, np.ndarray] | None = None,
) -> tuple[Path, list[dict]]:
    """Stream the chunk files of `store` into one schema-conformant HDF5 file, renamed into place at the end.

    Rows whose image failed (only present with --skip-bad) are dropped; the
    few-shot positions are remapped to the kept rows and the skipped files are
    listed in the provenance. `view_recipe` (augmented train views) becomes the
    train features' attr ``view_recipe``; with `cut` (block inputs) each split's
    ``block_inputs`` and the ``blocks`` group (`block_weights`) are written too.
    Returns (final path, skipped list).
    """
    final = Path(final)
    keep: dict[str, np.ndarray] = {}
    skipped: list[dict] = []
    for sp in splits:  # first pass over the small flag arrays only, to size every dataset
        keep[sp.name], sk = _kept_rows(store, sp, (paths or {}).get(sp.name))
        skipped += sk
    prov = {**provenance, "skipped": skipped}
    with atomic_path(final, replace_guard=lambda: no_readers(final)) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_header(f, dataset, backbone, prov, default_templates, classnames, wnids, imagenet_index, text)
            shape = None if cut is None else list(cut["input_shape"])
            for sp in splits:
                attrs = {"view_recipe": dict(view_recipe)} if (view_recipe and sp.name == "train") else None
                _stream_split(f, store, sp, keep[sp.name], embed_dim, shape, attrs)
            _write_fewshot(f, fewshot or {}, keep)
            if cut is not None:
                write_block_weights(f, cut, block_weights or {})
    return final, skipped


def remove_stale_tmp(final: str | os.PathLike) -> list[Path]:
    """Remove ``<final>.tmp-*`` files a killed writer left (call with the cache's lock held). Returns them."""
    final = Path(final)
    stale = [p for p in final.parent.glob(final.name + TMP_MARK + "*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --------------------------------------------------------------------------- adding nodes to an existing cache


def add_text_nodes(path: str | os.PathLike, per_template: Mapping[str, np.ndarray], attrs: Mapping) -> Path:
    """Rewrite `path` with every node copied (filters, chunks, attributes) plus ``text/<set>/per_template``.

    The copy goes to a temporary sibling and is renamed over `path`: readers see
    the old file or the new one, never a mix. `attrs` are set on each new node
    (how it was made); the root attributes, provenance included, stay as they
    were, so runs fitted on the cache still match it.
    """
    path = Path(path)
    with atomic_path(path, replace_guard=lambda: no_readers(path)) as tmp:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                src.copy(src[name], dst, name=name)
            for name, arr in per_template.items():
                if per_template_node(name) in dst:
                    del dst[per_template_node(name)]
                n_templates = len(json.loads(dst[text_node(name)].attrs["templates"]))
                node = _write_per_template(dst, name, arr, n_templates)
                for k, v in attrs.items():
                    node.attrs[k] = v if isinstance(v, str) else json.dumps(v)
    return path
