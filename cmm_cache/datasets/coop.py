"""CoOp split sources: the shipped compact split files, CoOp's own split file, FGVC-Aircraft's lists.

Each reader takes a validated manifest and the dataset's folder under the data
root and returns ``(rel_lists, bases)``: per split the image paths relative to
``<folder>/<image_dir>`` with their labels, and (empty here) per-split image
folders that differ from that default.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import RelLists, get_hint, indent, read_json_maybe_gz
from cmm_cache.errors import CmmError


def read_shipped(m: dict, folder: Path) -> tuple[RelLists, dict]:
    """`<name>/split.json.gz` beside the manifest: {split: {paths, labels}}."""
    data = read_json_maybe_gz(_mf.data_file(m, m["split_source"]["file"]))
    return {s: (list(v["paths"]), np.asarray(v["labels"], dtype=np.int64)) for s, v in data.items()}, {}


def read_coop_split_file(m: dict, folder: Path) -> tuple[RelLists, dict]:
    """CoOp's `split_zhou_<Name>.json` from the dataset folder (not shipped), checked against the pool."""
    src = m["split_source"]
    f = folder / src["filename"]
    if not f.is_file():
        raise CmmError(
            f"The CoOp split file for '{m['name']}' is not shipped with cmm-cache and was not found at {f}.",
            f"Download {src['filename']} from {src.get('url', 'the CoOp repository (DATASETS.md)')} and put it at "
            f"{f}.\n"
            f"Expected layout under the data root:\n{indent(m['layout'])}",
        )
    try:
        data = json.loads(f.read_text())
        rel = {
            s: ([r[0] for r in data[s]], np.asarray([int(r[1]) for r in data[s]], dtype=np.int64))
            for s in ("train", "val", "test")
        }
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise CmmError(
            f"{f} is not a CoOp split file ({{train, val, test}}: [[path, label, classname], ...]): {e}"
        ) from e
    check_pool(m, rel, f)
    return rel, {}


def read_fgvc(m: dict, folder: Path) -> tuple[RelLists, dict]:
    """FGVC-Aircraft's official `images_variant_*.txt` and `variants.txt`, as CoOp reads them."""
    src = m["split_source"]
    cf = folder / src["classes_file"]
    need = [cf] + [folder / v for v in src["files"].values()]
    absent = [p for p in need if not p.is_file()]
    if absent:
        raise CmmError(
            f"FGVC-Aircraft's official split lists are missing: {', '.join(str(p) for p in absent)}",
            "They come with the archive (its data/ folder). Expected layout under the data "
            f"root:\n{indent(m['layout'])}\n{get_hint(m)}",
        )
    variants = [ln.strip() for ln in cf.read_text().splitlines() if ln.strip()]
    lab = {v: i for i, v in enumerate(variants)}
    if variants != m.get("coop_classnames", variants):
        raise CmmError(
            f"{cf} does not list the 100 FGVC-Aircraft variants the manifest expects (different order or names)."
        )
    out = {}
    for split, fname in src["files"].items():
        rel, labels = [], []
        for ln in (folder / fname).read_text().splitlines():
            ln = ln.strip()
            if not ln:
                continue
            img, variant = ln.split(" ", 1)
            if variant not in lab:
                raise CmmError(f"{folder / fname}: unknown variant {variant!r}")
            rel.append(f"{img}.jpg")
            labels.append(lab[variant])
        out[split] = (rel, np.asarray(labels, dtype=np.int64))
    check_pool(m, out, folder)
    return out, {}


def check_pool(m: dict, splits: RelLists, where: Path) -> None:
    """The published indices must point at the images they were drawn as."""
    pool = read_json_maybe_gz(_mf.data_file(m, m["split_source"]["pool"]))
    bad, total, example = 0, 0, None
    for part, p in pool.items():
        rel = splits[part][0]
        for i, path in zip(p["index"], p["paths"]):
            total += 1
            if i >= len(rel) or rel[i] != path:
                bad += 1
                if example is None:
                    example = f"{part}[{i}]: expected {path}, found {rel[i] if i < len(rel) else '(past the end)'}"
    if bad:
        raise CmmError(
            f"The split lists of '{m['name']}' read from {where} differ from those the published few-shot indices "
            f"were drawn from ({bad} of {total} positions differ, e.g. {example}).",
            f"Use the original file: {m['split_source'].get('url', m['split_source'].get('origin', ''))}",
        )
