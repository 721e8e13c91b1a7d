"""Run folders: what makes a run itself, where its folder is, writing, reading and finding it.

A run's identity is (dataset, backbone, method, resolved config, shots, seed).
Its folder::

    <runs-root>/<dataset key>/<backbone>/<method>-<config key>/shot_K-seed_S/
        result.json      accuracies, chosen hyper-parameters, the resolved config and its key,
                         per-class train/val counts, the cache's provenance hash, versions
        weights.npz      the head's arrays (CMM: W unless no-map, T, T0), always T0
        classes.json     class names and WordNet ids of the run's class space
        provenance.json  the cache's provenance: which backbone, weights and preprocessing

The config key is the first 8 hex digits of the sha256 of the canonical JSON
of the resolved config (the method, all its options, the template set),
leaving out what does not change the numbers: seed and shots (they are in the
folder name), the device and the method's runtime options (e.g. ``threads``).
So two fits with different flags land in two folders, and the same config
fitted again replaces its own folder and nothing else.

Older layouts are still read: ``<backbone>/shot_K-seed_S/`` (CMM runs written
before methods existed) and ``<backbone>/<method>/shot_K-seed_S/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from cmm_cache.cache.reader import Cache
from cmm_cache.datasets.fewshot import group_name
from cmm_cache.datasets.names import dataset_key, is_user_data
from cmm_cache.errors import CmmError
from cmm_cache.runs.identity import result_config_key
from cmm_cache.util.atomic import atomic_dir
from cmm_cache.util.paths import runs_dir, safe_name

# ----------------------------------------------------------------------------
# Identity


# ----------------------------------------------------------------------------
# Where a run goes


def dataset_folder(cache: Cache) -> str:
    """The runs folder of a cache's dataset: the cache's own folder name when the cache sits in the
    cache dir as ``<key>/<backbone>.h5`` (so runs and caches of one dataset share one name), else its key."""

    parent = Path(cache.path).parent.name
    if is_user_data(cache.dataset) and re.fullmatch(re.escape(safe_name(cache.dataset_name)) + r"-[0-9a-f]{8}", parent):
        return parent
    return dataset_key(cache.dataset)


def run_dir(runs_root, cache: Cache, method: str, key: str, shots: int, seed: int) -> Path:
    """``<runs-root>/<dataset key>/<backbone>/<method>-<key>/shot_K-seed_S``."""

    return (
        Path(runs_root) / dataset_folder(cache) / safe_name(cache.backbone) / f"{safe_name(method)}-{key}"
    ) / group_name(shots, seed)


def target_dir(cache: Cache, result: dict, runs_root=None, out=None, several: bool = False) -> Path:
    """Where :func:`save_run` puts a result: `out` itself (one run), `out/shot_K-seed_S` (several),
    else its place under the runs root (default ``<cache-dir>/runs``)."""

    k, s = int(result["shots"]), int(result["seed"])
    if out is not None:
        return Path(out) / group_name(k, s) if several else Path(out)
    key = result.get("config_key") or result_config_key(result)
    return run_dir(runs_root if runs_root is not None else runs_dir(), cache, result["method"], key, k, s)


def check_target(path: Path, key: str, force: bool = False) -> bool:
    """Whether a run folder is at `path` already (it will be replaced); a run of another config
    there is refused unless `force` (two configs never share a folder)."""
    f = Path(path) / "result.json"
    if not f.is_file():
        if Path(path).exists() and any(Path(path).iterdir()) and not force:
            raise CmmError(
                f"{path} exists and is not a run folder.",
                "Pass another --out, or --force to replace it.",
            )
        return False
    try:
        old = result_config_key(json.loads(f.read_text()))
    except (OSError, ValueError):
        old = None
    if old != key and not force:
        raise CmmError(
            f"{path} holds a run of another configuration (config key {old or 'unknown'}, this one {key}).",
            "Pass another --out (or none: each configuration gets its own folder), or --force to replace it.",
        )
    return True


# ----------------------------------------------------------------------------
# Writing and reading a run folder


def write_run(run_dir: str | os.PathLike, result: dict, arrays: dict, cache: Cache) -> Path:
    """Write a run folder atomically; an existing run at that path is replaced."""

    run_dir = Path(run_dir)
    with atomic_dir(run_dir) as tmp:
        np.savez(tmp / "weights.npz", **arrays)
        (tmp / "classes.json").write_text(json.dumps({"names": cache.classnames, "wnids": cache.wnids}))
        (tmp / "provenance.json").write_text(json.dumps(cache.provenance, indent=2, sort_keys=True))
        (tmp / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return run_dir


def save_run(
    cache: Cache, result: dict, arrays: dict, runs_root=None, out=None, *, force: bool = False, several: bool = False
) -> Path:
    """Save a fitted run (from :func:`cmm_cache.runs.protocol.fit_run`) in its folder and return that folder.

    The folder is named by method and config key, so only a run of the same
    config is replaced; `out` (an exact folder, or with `several` the folder
    receiving ``shot_K-seed_S`` folders) holding a run of another config is
    refused unless `force`.
    """
    path = target_dir(cache, result, runs_root, out, several)
    check_target(path, result.get("config_key") or result_config_key(result), force)
    return write_run(path, result, arrays, cache)


# ----------------------------------------------------------------------------
# Checks before scoring a run on another cache
