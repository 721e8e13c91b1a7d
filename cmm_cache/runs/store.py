"""Run folders: where a run goes, whether a folder already holds it, and writing it.

A run's identity (:mod:`cmm_cache.runs.identity`) is (dataset, backbone, cache content, method, config
key, shots, seed). Its folder::

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
So two fits with different flags land in two folders. A folder that holds the
same run (same identity) is a finished run: fitting it again is skipped unless
forced; a folder holding anything else is never written over without `force`.
Reading a run folder is :mod:`cmm_cache.heads.run_folder` (inference code).

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
from cmm_cache.cache.schema import content_sha256
from cmm_cache.datasets.fewshot import group_name
from cmm_cache.datasets.names import dataset_key, is_user_data
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import FINISHED_REQUIRED, read_files, read_result, run_lock
from cmm_cache.runs.identity import identity_differences, result_config_key, run_identity
from cmm_cache.util.atomic import atomic_dir, recover_dir, remove_stale_dirs, write_errors, write_synced
from cmm_cache.util.paths import runs_dir, safe_name

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


def folder_identity(path: Path) -> dict | None:
    """The identity of the run folder at `path` (None when it holds no readable run). Runs written before
    identities were recorded get theirs from their result.json and the provenance.json beside it."""
    path = Path(path)
    try:
        result = read_result(path, FINISHED_REQUIRED)
        if not result.get("cache_content_sha256"):
            prov = json.loads(read_files(path, ("provenance.json",))["provenance.json"])
            result = {**result, "cache_content_sha256": content_sha256(prov) if isinstance(prov, dict) else None}
        return run_identity(result)
    except (CmmError, OSError, ValueError, KeyError, TypeError):
        return None


def check_target(path: Path, identity: dict, force: bool = False) -> str:
    """What `path` holds for a run of `identity`: ``"absent"`` (nothing: write it), ``"same"`` (this very run,
    finished: skip it, or replace it when forced) or ``"other"`` (only with `force`; refused otherwise, saying
    what differs). Two runs of different identities never share a folder by accident."""
    path = Path(path)
    if not (path / "result.json").is_file():
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
            raise CmmError(
                f"{path} exists and is not a run folder.",
                "Pass another --out, or --force to replace it.",
            )
        return "absent"
    old = folder_identity(path)
    if old == identity:
        return "same"
    if force:
        return "other"
    what = "; ".join(identity_differences(old, identity)) if old else "its result.json cannot be read"
    raise CmmError(
        f"{path} holds another run ({what}).",
        "Pass another --out (or none: each configuration gets its own folder), or --force to replace it.",
    )


# ----------------------------------------------------------------------------
# Writing and reading a run folder


def _tidy(run_dir: Path) -> None:
    """With the run's lock held: a run left aside by a save killed between two renames goes back to its
    place, and the temporary/old folders of killed saves go away."""
    with write_errors(run_dir):
        recover_dir(run_dir)
        remove_stale_dirs(run_dir)


def _write(run_dir: Path, result: dict, arrays: dict, cache: Cache) -> Path:
    """Write the four files into a temporary folder (each fsynced), then put it in place in one step
    (:func:`cmm_cache.util.atomic.atomic_dir`). Call with the run's lock held."""
    _tidy(run_dir)
    with atomic_dir(run_dir) as tmp:
        write_synced(tmp / "weights.npz", lambda fh: np.savez(fh, **arrays))
        write_synced(tmp / "classes.json", json.dumps({"names": cache.classnames, "wnids": cache.wnids}).encode())
        write_synced(tmp / "provenance.json", json.dumps(cache.provenance, indent=2, sort_keys=True).encode())
        write_synced(tmp / "result.json", json.dumps(result, indent=2, default=str).encode())
    return run_dir


def write_run(run_dir: str | os.PathLike, result: dict, arrays: dict, cache: Cache) -> Path:
    """Write a run folder atomically; an existing run at that path is replaced in one step, so a reader always
    finds a complete run there and a save killed at any instant leaves the last complete run in place.
    Concurrent writers of one run take turns (:func:`run_lock`). A disk-full or permission error is one
    :class:`~cmm_cache.util.atomic.WriteFailed` (nothing half-written left)."""

    run_dir = Path(run_dir)
    with run_lock(run_dir):
        return _write(run_dir, result, arrays, cache)


def save_run(
    cache: Cache, result: dict, arrays: dict, runs_root=None, out=None, *, force: bool = False, several: bool = False
) -> Path:
    """Save a fitted run (from :func:`cmm_cache.runs.protocol.fit_run`) in its folder and return that folder.

    The folder is named by method and config key; `out` (an exact folder, or with
    `several` the folder receiving ``shot_K-seed_S`` folders) holding another run
    (another identity) is refused unless `force`. The same run there is replaced.
    The check and the write happen under the run's lock (:func:`run_lock`).
    """
    path = target_dir(cache, result, runs_root, out, several)
    with run_lock(path):
        _tidy(path)
        check_target(path, run_identity(result), force)
        return _write(path, result, arrays, cache)


# ----------------------------------------------------------------------------
# Checks before scoring a run on another cache
