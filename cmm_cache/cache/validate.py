"""The rules of schema ``cmm-cache/1`` in one place: what a cache file must hold to be read.

:func:`cmm_cache.cache.reader.open_cache` runs :data:`CHECKS` when it opens a file (attributes, shapes,
dtypes and the small arrays: names, labels, indices, text features) and refuses a file that breaks one with
one message listing what is wrong; the large image features are checked for non-finite values when they are
read (:func:`nonfinite_problem`). ``cmm-cache cache verify`` (:mod:`.verify`) runs the very same checks after
reading every byte. Nothing else decides whether a cache is sound, so the two cannot disagree.

Each check looks at one group of nodes and appends what is wrong to the scan's problem list; it records what
later groups need (class count, feature dimension, split sizes). A new optional node brings its own check:
``register_check(fn)`` (it runs after the built-in ones, with the same :class:`Scan`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

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

MAX_SHOWN = 8  # problems named in one error message (verify lists them all)
_BAD_NAMES = {"", ".", ".."}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Scan:
    """One pass of the checks over an open file: the problems found and what later checks need."""

    f: h5py.File
    problems: list[str] = field(default_factory=list)
    data: dict[str, np.ndarray] = field(default_factory=dict)  # small datasets already read (verify reads all)
    nonfinite: set[str] = field(default_factory=set)  # large datasets found holding NaN/inf (verify's data pass)
    unreadable: set[str] = field(default_factory=set)  # datasets whose bytes fail their checksum
    classes: int | None = None
    dim: int | None = None
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    views: dict[str, list[str]] = field(default_factory=dict)  # split -> view names

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def small(self, key: str) -> np.ndarray | None:
        """The values of a small dataset (read once; None when its bytes cannot be read: reported)."""
        if key in self.data:
            return self.data[key]
        if key in self.unreadable:
            return None
        try:
            self.data[key] = self.f[key][...]
        except (OSError, KeyError) as e:
            self.unreadable.add(key)
            self.add(f"{key}: damaged data ({e})")
            return None
        return self.data[key]


Check = Callable[[Scan], None]


def _is_str_attr(v) -> bool:
    return isinstance(v, (str, bytes, np.str_, np.bytes_))


def _is_int_dtype(dt) -> bool:
    return np.issubdtype(dt, np.integer)


def _is_str_dtype(dt) -> bool:
    return h5py.check_string_dtype(dt) is not None or dt.kind in ("S", "U")


def name_problem(what: str, value) -> str | None:
    """Why a dataset/backbone name from a file is not usable (it names folders and appears in tables)."""
    if not _is_str_attr(value):
        return f"attribute {what} is not a string ({type(value).__name__})"
    s = as_str(value)
    if s.strip() in _BAD_NAMES:
        return f"attribute {what} is {s!r}, not a usable name"
    if _CONTROL.search(s):
        return f"attribute {what} holds control characters ({s!r})"
    return None


def _json_list_of_str(raw) -> list[str] | None:
    try:
        v = json.loads(as_str(raw))
    except (ValueError, TypeError):
        return None
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


# ----------------------------------------------------------------------------
# The checks, one per group of nodes


def check_root(scan: Scan) -> None:
    attrs = scan.f.attrs
    for name in ("schema", "dataset", "backbone", "default_templates", "provenance"):
        if name not in attrs:
            scan.add(f"attribute '{name}' missing")
    if "schema" in attrs and (not _is_str_attr(attrs["schema"]) or as_str(attrs["schema"]) != SCHEMA):
        scan.add(f"attribute schema is {attrs['schema']!r}, expected '{SCHEMA}'")
    for name in ("dataset", "backbone"):
        if name in attrs:
            why = name_problem(name, attrs[name])
            if why:
                scan.add(why)
    if "default_templates" in attrs and not _is_str_attr(attrs["default_templates"]):
        scan.add("attribute default_templates is not a string")
    if "provenance" in attrs:
        try:
            prov = json.loads(as_str(attrs["provenance"])) if _is_str_attr(attrs["provenance"]) else None
        except ValueError:
            prov = None
            scan.add("attribute provenance is not valid JSON")
        else:
            if not isinstance(prov, dict):
                scan.add(f"attribute provenance is not a JSON object ({type(prov).__name__})")
            elif "embed_dim" in prov and not (isinstance(prov["embed_dim"], int) and prov["embed_dim"] > 0):
                scan.add(f"provenance embed_dim is {prov['embed_dim']!r}, not a positive integer")


def check_classes(scan: Scan) -> None:
    f = scan.f
    if "classes/names" not in f or not isinstance(f["classes/names"], h5py.Dataset):
        scan.add("classes/names missing")
        return
    d = f["classes/names"]
    if d.ndim != 1 or not _is_str_dtype(d.dtype):
        scan.add(f"classes/names: expected strings [C], got {d.dtype} {d.shape}")
        return
    names = scan.small("classes/names")
    if names is None:
        return
    try:
        [as_str(x) for x in names]
    except UnicodeDecodeError:
        scan.add("classes/names: not UTF-8 text")
        return
    C = scan.classes = len(names)
    if C < 1:
        scan.add("classes/names is empty")
    if "classes/wnids" in f:
        w = f["classes/wnids"]
        if not isinstance(w, h5py.Dataset) or w.ndim != 1 or not _is_str_dtype(w.dtype):
            scan.add(f"classes/wnids: expected strings [{C}] like classes/names")
        elif w.shape[0] != C:
            scan.add("classes/wnids length differs from classes/names")
    if "classes/imagenet_index" in f:
        ii = f["classes/imagenet_index"]
        if not isinstance(ii, h5py.Dataset) or ii.ndim != 1 or not _is_int_dtype(ii.dtype):
            scan.add(f"classes/imagenet_index: expected integers [{C}]")
        else:
            if ii.shape[0] != C:
                scan.add("classes/imagenet_index length differs from classes/names")
            inet = scan.small("classes/imagenet_index")
            if inet is not None and len(inet) and (inet.min() < 0 or inet.max() >= 1000):
                scan.add("classes/imagenet_index outside 0..999")


def check_text(scan: Scan) -> None:
    f = scan.f
    if "text" not in f or not isinstance(f["text"], h5py.Group) or not len(f["text"]):
        scan.add("no text/<set>/features")
        return
    for s in f["text"]:
        key = text_node(s)
        if key not in f or not isinstance(f[key], h5py.Dataset):
            scan.add(f"{key} missing")
            continue
        d = f[key]
        if d.dtype != np.float32 or d.ndim != 2 or d.shape[1] < 1:
            scan.add(f"{key}: expected float32 [C, d], got {d.dtype} {d.shape}")
            continue
        if scan.classes is not None and d.shape[0] != scan.classes:
            scan.add(f"{key}: {d.shape[0]} rows for {scan.classes} classes")
        scan.dim = scan.dim or d.shape[1]
        if d.shape[1] != scan.dim:
            scan.add(f"{key}: dimension {d.shape[1]} differs from {scan.dim}")
        if "templates" not in d.attrs:
            scan.add(f"{key}: attribute templates missing")
        elif _json_list_of_str(d.attrs["templates"]) is None:
            scan.add(f"{key}: attribute templates is not a JSON list of strings")
        t = scan.small(key)
        if t is not None and not np.all(np.isfinite(t)):
            scan.add(f"{key}: non-finite values")
        if per_template_node(s) in f:  # optional node
            _check_per_template(scan, s, d)
    dt = f.attrs.get("default_templates")
    if dt is not None and _is_str_attr(dt) and as_str(dt) not in f["text"]:
        scan.add(f"default_templates '{as_str(dt)}' has no text/{as_str(dt)}/features")


def _check_per_template(scan: Scan, s: str, feats: h5py.Dataset) -> None:
    pkey = per_template_node(s)
    pt = scan.f[pkey]
    n_tpl = len(_json_list_of_str(feats.attrs.get("templates", "[]")) or [])
    if not isinstance(pt, h5py.Dataset) or pt.dtype != np.float32 or pt.ndim != 3:
        scan.add(f"{pkey}: expected float32 [C, M, d], got {getattr(pt, 'dtype', '?')} {getattr(pt, 'shape', '?')}")
    elif pt.shape[0] != feats.shape[0] or pt.shape[2] != feats.shape[1] or pt.shape[1] != n_tpl:
        scan.add(
            f"{pkey}: shape {pt.shape} does not match {feats.shape[0]} classes, {n_tpl} templates, {feats.shape[1]}-d"
        )
    if pkey in scan.nonfinite:
        scan.add(f"{pkey}: non-finite values")


def check_splits(scan: Scan) -> None:
    f = scan.f
    if "splits" in f and not isinstance(f["splits"], h5py.Group):
        scan.add("splits is not a group")
        return
    for s in f["splits"] if "splits" in f else []:
        base = f"splits/{s}"
        g = f[base]
        missing = [k for k in ("features", "labels", "index") if not isinstance(g, h5py.Group) or k not in g]
        if missing:
            scan.add(f"{base}: missing {', '.join(missing)}")
            continue
        fe, la, ix = g["features"], g["labels"], g["index"]
        if not isinstance(fe, h5py.Dataset) or fe.ndim != 3 or fe.dtype != np.float16 or fe.shape[1] < 1:
            scan.add(
                f"{base}/features: expected float16 [n, V >= 1, d], got {getattr(fe, 'dtype', '?')} "
                f"{getattr(fe, 'shape', '?')}"
            )
            continue
        n, V, d = fe.shape
        scan.rows[s] = n
        if scan.dim is not None and d != scan.dim:
            scan.add(f"{base}/features: dimension {d} differs from the text features' {scan.dim}")
        raw = fe.attrs.get("views")
        views = _json_list_of_str(raw) if raw is not None else (["center"] if V == 1 else None)
        if views is None:
            scan.add(f"{base}/features: attribute views missing or not a JSON list of strings")
        elif len(views) != V:
            scan.add(f"{base}/features: {V} views but attribute views lists {len(views)}")
        else:
            scan.views[s] = views
        for key, node, what in ((f"{base}/labels", la, "labels"), (f"{base}/index", ix, "index")):
            if not isinstance(node, h5py.Dataset) or node.ndim != 1 or not _is_int_dtype(node.dtype):
                got = f"{getattr(node, 'dtype', '?')} {getattr(node, 'shape', '?')}"
                scan.add(f"{key}: expected integers [n], got {got}")
                continue
            if node.shape[0] != n:
                scan.add(f"{key}: {node.shape[0]} {what} for {n} feature rows")
                continue
            vals = scan.small(key)
            if vals is None or not len(vals):
                continue
            if what == "labels" and scan.classes is not None and (vals.min() < 0 or vals.max() >= scan.classes):
                scan.add(f"{key}: class ids outside 0..{scan.classes - 1} (found {int(vals.min())}..{int(vals.max())})")
            if what == "index" and vals.min() < 0:
                scan.add(f"{key}: negative manifest rows")
        if f"{base}/features" in scan.nonfinite:
            scan.add(f"{base}/features: non-finite values")
        if "view_recipe" in fe.attrs:  # optional: how augmented views were made (extract --train-views)
            try:
                json.loads(as_str(fe.attrs["view_recipe"]))
            except (json.JSONDecodeError, UnicodeDecodeError):
                scan.add(f"{base}/features: attribute view_recipe is not JSON")


def check_blocks(scan: Scan) -> None:
    """The optional block inputs (extract --finetune-blocks): one cut (JSON attribute of blocks/), the weights above
    the cut, and per split float16 [rows, Vb, *input_shape] with one row per feature row (shapes and attributes
    only: the values are checked when read, and by verify)."""
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
        if (
            not isinstance(d, h5py.Dataset)
            or d.dtype != np.float16
            or d.ndim != 2 + len(shape)
            or tuple(d.shape[2:]) != shape
        ):
            got = f"{getattr(d, 'dtype', '?')} {getattr(d, 'shape', '?')}"
            scan.add(f"{key}: expected float16 [n, Vb, {', '.join(map(str, shape))}], got {got}")
            continue
        if d.shape[0] != scan.rows[s]:
            scan.add(f"{key}: {d.shape[0]} rows for {scan.rows[s]} in splits/{s}/features")
        views = _json_list_of_str(d.attrs.get("views"))
        if views is None or len(views) != d.shape[1]:
            scan.add(f"{key}: {d.shape[1]} views but attribute views is missing or lists another number")
        if key in scan.nonfinite:
            scan.add(f"{key}: non-finite values")


def check_fewshot(scan: Scan) -> None:
    f = scan.f
    if "fewshot" in f and not isinstance(f["fewshot"], h5py.Group):
        scan.add("fewshot is not a group")
        return
    for g in f["fewshot"] if "fewshot" in f else []:
        if not GROUP_RE.match(g):
            scan.add(f"fewshot/{g}: name does not match shot_<K>-seed_<S>")
            continue
        for part in ("train", "val"):
            key = f"fewshot/{g}/{part}"
            if key not in f:
                scan.add(f"{key} missing")
                continue
            node = f[key]
            if not isinstance(node, h5py.Dataset) or node.ndim != 1 or not _is_int_dtype(node.dtype):
                got = f"{getattr(node, 'dtype', '?')} {getattr(node, 'shape', '?')}"
                scan.add(f"{key}: expected integer row positions [m], got {got}")
                continue
            pos = scan.small(key)
            if pos is None:
                continue
            if part not in scan.rows:
                if len(pos):
                    scan.add(f"{key}: points into splits/{part}, which does not exist or is malformed")
                continue
            if len(pos) and (pos.min() < 0 or pos.max() >= scan.rows[part]):
                scan.add(f"{key}: row positions outside 0..{scan.rows[part] - 1}")


CHECKS: list[Check] = [check_root, check_classes, check_text, check_splits, check_fewshot, check_blocks]


def register_check(check: Check) -> Check:
    """Add the check of a new (optional) node group; it runs after the built-in ones, on open and in verify."""
    if check not in CHECKS:
        CHECKS.append(check)
    return check


def run_checks(scan: Scan) -> list[str]:
    for check in CHECKS:
        check(scan)
    return scan.problems


def nonfinite_problem(key: str, values: np.ndarray, block_rows: int = 1 << 14) -> str | None:
    """``"<key>: non-finite values"`` when `values` hold NaN or inf (checked in blocks: memory stays flat)."""
    for a in range(0, len(values), block_rows):
        if not np.all(np.isfinite(values[a : a + block_rows])):
            return f"{key}: non-finite values"
    return None


def summary(problems: list[str]) -> str:
    """The first problems for a message, with how many more there are."""
    shown = "; ".join(problems[:MAX_SHOWN])
    return shown + (f"; and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else "")
