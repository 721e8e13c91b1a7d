"""``cache verify``: read every byte (HDF5 fletcher32 checksums) and check the schema, one node group at a time.

Each checker looks at one group of nodes (root attributes, classes/, text/,
splits/, fewshot/) and appends what is wrong to the scan's problem list; it
records what later groups need (class count, feature dimension, split sizes).
"""

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
    SCHEMA,
    as_str,
    block_inputs_node,
    per_template_node,
    text_node,
)
from cmm_cache.datasets.fewshot import GROUP_RE

_BLOCK_BYTES = 64 << 20  # 3-D features are checked in blocks of this size: memory stays flat


@dataclass
class _Scan:
    f: h5py.File
    problems: list[str] = field(default_factory=list)
    small: dict[str, np.ndarray] = field(default_factory=dict)  # values of every dataset that is not 3-D
    nonfinite: set[str] = field(default_factory=set)  # 3-D datasets holding NaN/inf
    classes: int | None = None
    dim: int | None = None
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows

    def add(self, msg: str) -> None:
        self.problems.append(msg)


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Every problem found in the cache file at `path` (an empty list: it is sound)."""
    path = Path(path)
    if not path.is_file():
        return [f"no file at {path}"]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"not readable as HDF5: {e}"]
    with f:
        scan = _Scan(f)
        for check in (_check_data, _check_root_attrs, _check_classes, _check_text, _check_splits, _check_fewshot,
                      _check_blocks):  # fmt: skip
            check(scan)
    return scan.problems


def _check_data(scan: _Scan) -> None:
    """Every dataset has a checksum and reads back (HDF5 verifies the checksum on read)."""

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if not obj.fletcher32:
            scan.add(f"{name}: stored without a checksum")
        try:
            if obj.ndim >= 3:  # features and block inputs: read in blocks, keep nothing
                row = obj.dtype.itemsize * int(np.prod(obj.shape[1:]))
                step = max(1, _BLOCK_BYTES // max(1, row))
                for a in range(0, obj.shape[0], step):
                    if not np.all(np.isfinite(obj[a : a + step])):
                        scan.nonfinite.add(name)
            else:
                scan.small[name] = obj[...]
        except OSError as e:
            scan.add(f"{name}: damaged data ({e})")

    scan.f.visititems(visit)


def _check_root_attrs(scan: _Scan) -> None:
    attrs = scan.f.attrs
    for name in ("schema", "dataset", "backbone", "default_templates", "provenance"):
        if name not in attrs:
            scan.add(f"attribute '{name}' missing")
    if "schema" in attrs and as_str(attrs["schema"]) != SCHEMA:
        scan.add(f"attribute schema is '{as_str(attrs['schema'])}', expected '{SCHEMA}'")
    if "provenance" in attrs:
        try:
            json.loads(as_str(attrs["provenance"]))
        except json.JSONDecodeError:
            scan.add("attribute provenance is not valid JSON")


def _check_classes(scan: _Scan) -> None:
    if "classes/names" not in scan.f:
        scan.add("classes/names missing")
        return
    names = scan.small.get("classes/names")
    if names is None:
        return  # unreadable: reported by _check_data
    C = scan.classes = len(names)
    wnids = scan.small.get("classes/wnids")
    if wnids is not None and len(wnids) != C:
        scan.add("classes/wnids length differs from classes/names")
    inet = scan.small.get("classes/imagenet_index")
    if inet is not None:
        if len(inet) != C:
            scan.add("classes/imagenet_index length differs from classes/names")
        if len(inet) and (inet.min() < 0 or inet.max() >= 1000):
            scan.add("classes/imagenet_index outside 0..999")


def _check_text(scan: _Scan) -> None:
    f = scan.f
    if "text" not in f or not len(f["text"]):
        scan.add("no text/<set>/features")
        return
    for s in f["text"]:
        key = text_node(s)
        if key not in f:
            scan.add(f"{key} missing")
            continue
        d = f[key]
        if d.dtype != np.float32 or d.ndim != 2:
            scan.add(f"{key}: expected float32 [C, d], got {d.dtype} {d.shape}")
            continue
        if scan.classes is not None and d.shape[0] != scan.classes:
            scan.add(f"{key}: {d.shape[0]} rows for {scan.classes} classes")
        scan.dim = scan.dim or d.shape[1]
        if d.shape[1] != scan.dim:
            scan.add(f"{key}: dimension {d.shape[1]} differs from {scan.dim}")
        if "templates" not in d.attrs:
            scan.add(f"{key}: attribute templates missing")
        t = scan.small.get(key)
        if t is not None and not np.all(np.isfinite(t)):
            scan.add(f"{key}: non-finite values")
        if per_template_node(s) in f:  # optional node
            _check_per_template(scan, s, d)
    dt = as_str(f.attrs.get("default_templates", ""))
    if dt and dt not in f["text"]:
        scan.add(f"default_templates '{dt}' has no text/{dt}/features")


def _check_per_template(scan: _Scan, s: str, feats: h5py.Dataset) -> None:
    pkey = per_template_node(s)
    pt = scan.f[pkey]
    try:
        n_tpl = len(json.loads(as_str(feats.attrs.get("templates", "[]"))))
    except json.JSONDecodeError:
        n_tpl = None
        scan.add(f"{text_node(s)}: attribute templates is not JSON")
    if pt.dtype != np.float32 or pt.ndim != 3:
        scan.add(f"{pkey}: expected float32 [C, M, d], got {pt.dtype} {pt.shape}")
    elif pt.shape[0] != feats.shape[0] or pt.shape[2] != feats.shape[1] or pt.shape[1] != n_tpl:
        scan.add(
            f"{pkey}: shape {pt.shape} does not match {feats.shape[0]} classes, {n_tpl} templates, {feats.shape[1]}-d"
        )
    if pkey in scan.nonfinite:
        scan.add(f"{pkey}: non-finite values")


def _check_splits(scan: _Scan) -> None:
    f = scan.f
    for s in f["splits"] if "splits" in f else []:
        base = f"splits/{s}"
        missing = [k for k in ("features", "labels", "index") if k not in f[base]]
        if missing:
            scan.add(f"{base}: missing {', '.join(missing)}")
            continue
        fe, la, ix = f[f"{base}/features"], f[f"{base}/labels"], f[f"{base}/index"]
        if fe.ndim != 3 or fe.dtype != np.float16:
            scan.add(f"{base}/features: expected float16 [n, V, d], got {fe.dtype} {fe.shape}")
            continue
        if scan.dim is not None and fe.shape[2] != scan.dim:
            scan.add(f"{base}/features: dimension {fe.shape[2]} differs from the text features' {scan.dim}")
        try:
            views = json.loads(as_str(fe.attrs.get("views", "")))
            if len(views) != fe.shape[1]:
                scan.add(f"{base}/features: {fe.shape[1]} views but attribute views lists {len(views)}")
        except json.JSONDecodeError:
            scan.add(f"{base}/features: attribute views missing or not JSON")
        n = scan.rows[s] = fe.shape[0]
        if la.shape != (n,) or ix.shape != (n,):
            scan.add(f"{base}: labels/index shapes {la.shape}/{ix.shape} do not match {n} rows")
        lab, idx, C = scan.small.get(f"{base}/labels"), scan.small.get(f"{base}/index"), scan.classes
        if lab is not None and C is not None and len(lab) and (lab.min() < 0 or lab.max() >= C):
            scan.add(f"{base}/labels: class ids outside 0..{C - 1}")
        if idx is not None and len(idx) and idx.min() < 0:
            scan.add(f"{base}/index: negative manifest rows")
        if f"{base}/features" in scan.nonfinite:
            scan.add(f"{base}/features: non-finite values")
        if "view_recipe" in fe.attrs:
            try:
                json.loads(as_str(fe.attrs["view_recipe"]))
            except json.JSONDecodeError:
                scan.add(f"{base}/features: attribute view_recipe is not JSON")


def _check_blocks(scan: _Scan) -> None:
    """The optional block inputs: one cut (JSON), its weights, and per split [rows, Vb, *input_shape] float16."""
    f = scan.f
    inputs = [s for s in scan.rows if block_inputs_node(s) in f]
    if BLOCKS_GROUP not in f:
        for s in inputs:
            scan.add(f"{block_inputs_node(s)}: block inputs without a blocks/ group (attribute cut)")
        return
    try:
        cut = json.loads(as_str(f[BLOCKS_GROUP].attrs["cut"]))
        shape = tuple(int(v) for v in cut["input_shape"])
        cut["config"]["arch"]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        scan.add(f"blocks: attribute cut missing or incomplete ({e})")
        return
    if BLOCK_SUFFIX_GROUP not in f or not len(f[BLOCK_SUFFIX_GROUP]):
        scan.add(f"{BLOCK_SUFFIX_GROUP}: the weights above the cut are missing")
    for s in inputs:
        key = block_inputs_node(s)
        d = f[key]
        if d.dtype != np.float16 or d.ndim != 2 + len(shape) or tuple(d.shape[2:]) != shape:
            scan.add(f"{key}: expected float16 [n, Vb, {', '.join(map(str, shape))}], got {d.dtype} {d.shape}")
            continue
        if d.shape[0] != scan.rows[s]:
            scan.add(f"{key}: {d.shape[0]} rows for {scan.rows[s]} in splits/{s}/features")
        try:
            if len(json.loads(as_str(d.attrs.get("views", "")))) != d.shape[1]:
                scan.add(f"{key}: {d.shape[1]} views but attribute views lists another number")
        except json.JSONDecodeError:
            scan.add(f"{key}: attribute views missing or not JSON")
        if key in scan.nonfinite:
            scan.add(f"{key}: non-finite values")


def _check_fewshot(scan: _Scan) -> None:
    f = scan.f
    for g in f["fewshot"] if "fewshot" in f else []:
        if not GROUP_RE.match(g):
            scan.add(f"fewshot/{g}: name does not match shot_<K>-seed_<S>")
        for part in ("train", "val"):
            key = f"fewshot/{g}/{part}"
            if key not in f:
                scan.add(f"{key} missing")
                continue
            pos = scan.small.get(key)
            if pos is None:
                continue
            if part not in scan.rows:
                if len(pos):
                    scan.add(f"{key}: points into splits/{part}, which does not exist")
                continue
            if len(pos) and (pos.min() < 0 or pos.max() >= scan.rows[part]):
                scan.add(f"{key}: row positions outside 0..{scan.rows[part] - 1}")
