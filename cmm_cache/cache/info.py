"""Looking at caches without trusting them: ``cache ls`` (summaries) and ``cache info`` (every node)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from cmm_cache.cache.partial import PARTIAL_SUFFIX, PartialStore
from cmm_cache.cache.reader import open_cache, open_h5
from cmm_cache.cache.schema import as_str
from cmm_cache.errors import CmmError
from cmm_cache.util.paths import cache_dir


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cache_summary(path: str | os.PathLike) -> dict:
    """Small facts about one cache file (for `cache ls`); never raises: damage shows as `error`."""
    path = Path(path)
    row = {"path": str(path), "size_bytes": path.stat().st_size if path.exists() else 0}
    row["size"] = human_bytes(row["size_bytes"])
    try:
        c = open_cache(path)
        with open_h5(path) as f:
            sizes = {s: int(f[f"splits/{s}/features"].shape[0]) for s in c.split_names}
        row.update(
            dataset=c.dataset_name,  # the short name (your own data: `dtd10`, not its path)
            source=c.dataset,  # the --dataset it was extracted with
            backbone=c.backbone,
            classes=c.num_classes,
            embed_dim=c.embed_dim,
            splits=sizes,
            fewshot=[f"{k}x{s}" for k, s in c.fewshot_groups],
            created=c.provenance.get("created"),
        )
    except (CmmError, KeyError, OSError) as e:
        row["error"] = e.message if isinstance(e, CmmError) else f"unreadable ({e})"
    return row


def _unfinished(p: Path) -> dict:
    store = PartialStore(p.with_name(p.name[: -len(PARTIAL_SUFFIX)]))
    size = sum(q.stat().st_size for q in p.iterdir() if q.is_file())
    return {
        "path": str(p),
        "dataset": p.parent.name,
        "backbone": p.name[: -len(".h5" + PARTIAL_SUFFIX)],
        "unfinished": True,
        "chunks_done": store.chunks_done(),
        "size_bytes": size,
        "size": human_bytes(size),
    }


def list_caches(cache_root: str | os.PathLike | None = None) -> list[dict]:
    """Every `<cache-dir>/<dataset>/<backbone>.h5`, plus unfinished extractions (`.partial`)."""

    root = cache_dir(cache_root)
    if not root.is_dir():
        return []
    rows = [cache_summary(p) for p in sorted(root.glob("*/*.h5"))]
    rows += [_unfinished(p) for p in sorted(root.glob("*/*.h5" + PARTIAL_SUFFIX)) if p.is_dir()]
    return rows


def _node_info(f: h5py.File) -> list[dict]:
    nodes = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            nodes.append(
                {
                    "node": name,
                    "shape": list(obj.shape),
                    "dtype": str(obj.dtype),
                    "checksum": bool(obj.fletcher32),
                    "attrs": {k: as_str(v) for k, v in obj.attrs.items()},
                }
            )

    f.visititems(visit)
    return nodes


def cache_info(path: str | os.PathLike) -> dict:
    """Attributes, provenance and every node (shape, dtype, checksum) of a cache file."""
    path = Path(path)
    with open_h5(path) as f:
        attrs = {k: as_str(v) for k, v in f.attrs.items() if k != "provenance"}
        try:
            prov = json.loads(as_str(f.attrs.get("provenance", "{}")))
        except json.JSONDecodeError:
            prov = {"error": "provenance is not JSON"}
        nodes = _node_info(f)
    return {"path": str(path), "size_bytes": path.stat().st_size, "attrs": attrs, "provenance": prov, "nodes": nodes}
