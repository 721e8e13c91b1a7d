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

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import Cache
from .errors import CmmError
from .fewshot import group_name
from .heads import CMMHead, Head, Model, load_head

# Never part of a run's identity: they are in the folder name, or change speed and not results.
NOT_IDENTITY = ("seed", "shots", "device")


# ----------------------------------------------------------------------------
# Identity


def typed_options(options: dict, defaults: dict) -> dict:
    """Options with ints given for float defaults made floats, so `lr=1` and `lr=1.0` are one config."""
    out = dict(options)
    for k, v in options.items():
        d = defaults.get(k)
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def identity(config: dict, runtime_options=()) -> dict:
    """The part of a run's (flat) resolved config that decides its numbers."""
    drop = set(NOT_IDENTITY) | set(runtime_options)
    ident = {k: v for k, v in config.items() if k not in drop}
    ident.setdefault("method", "cmm")  # runs written before methods existed are CMM runs
    return ident


def config_key(config: dict, runtime_options=()) -> str:
    """8 hex digits of sha256 over the canonical JSON of :func:`identity`."""
    blob = json.dumps(identity(config, runtime_options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8]


def _runtime_options(method: str) -> tuple:
    from .methods import METHODS, list_methods

    list_methods()  # fills the registry
    m = METHODS.get(method)
    return m.runtime_options if m is not None else ("threads",)


def result_config_key(result: dict) -> str | None:
    """A result's config key: recorded since run folders carry one, else computed from its config."""
    if result.get("config_key"):
        return str(result["config_key"])
    cfg = result.get("config")
    if not isinstance(cfg, dict):
        return None
    return config_key(cfg, _runtime_options(cfg.get("method") or result.get("method") or "cmm"))


def config_changes(result: dict) -> dict:
    """What a run's config sets away from its method's defaults (for messages and tables)."""
    from .methods import METHODS, list_methods

    list_methods()
    cfg = identity(result.get("config") or {}, _runtime_options(result.get("method") or "cmm"))
    m = METHODS.get(cfg.get("method", "cmm"))
    defaults = m.defaults if m is not None else {}
    return {k: v for k, v in cfg.items() if k not in ("method", "templates") and k in defaults and defaults[k] != v}


# ----------------------------------------------------------------------------
# Where a run goes


def locate_cache(dataset: str, backbone: str, cache_dir=None) -> Path:
    """The cache file of (dataset, backbone) in the cache dir: the one lookup fit and eval use
    (:func:`cmm_cache.paths.find_cache`: a registered name, a path, or your data's short name)."""
    from .paths import find_cache

    return find_cache(dataset, backbone, cache_dir)


def dataset_folder(cache: Cache) -> str:
    """The runs folder of a cache's dataset: the cache's own folder name when the cache sits in the
    cache dir as ``<key>/<backbone>.h5`` (so runs and caches of one dataset share one name), else its key."""
    from .paths import dataset_key, is_user_data, safe_name

    parent = Path(cache.path).parent.name
    if is_user_data(cache.dataset) and re.fullmatch(re.escape(safe_name(cache.dataset_name)) + r"-[0-9a-f]{8}", parent):
        return parent
    return dataset_key(cache.dataset)


def run_dir(runs_root, cache: Cache, method: str, key: str, shots: int, seed: int) -> Path:
    """``<runs-root>/<dataset key>/<backbone>/<method>-<key>/shot_K-seed_S``."""
    from .paths import safe_name

    return (
        Path(runs_root) / dataset_folder(cache) / safe_name(cache.backbone) / f"{safe_name(method)}-{key}"
    ) / group_name(shots, seed)


def target_dir(cache: Cache, result: dict, runs_root=None, out=None, several: bool = False) -> Path:
    """Where :func:`save_run` puts a result: `out` itself (one run), `out/shot_K-seed_S` (several),
    else its place under the runs root (default ``<cache-dir>/runs``)."""
    from .paths import runs_dir

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
    from .atomic import atomic_dir

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
    """Save a fitted run (from :func:`cmm_cache.protocol.fit_run`) in its folder and return that folder.

    The folder is named by method and config key, so only a run of the same
    config is replaced; `out` (an exact folder, or with `several` the folder
    receiving ``shot_K-seed_S`` folders) holding a run of another config is
    refused unless `force`.
    """
    path = target_dir(cache, result, runs_root, out, several)
    check_target(path, result.get("config_key") or result_config_key(result), force)
    return write_run(path, result, arrays, cache)


@dataclass
class Run:
    path: Path
    result: dict
    model: Model | None  # the CMM tensors (None for other methods)
    classnames: list[str]
    wnids: list[str] | None
    provenance: dict
    head: Head | None = None  # what scores features: use this
    T0: torch.Tensor | None = None  # the zero-shot text classifier of the run's cache

    @property
    def embed_dim(self) -> int:
        return int(self.T0.shape[1])


def load_run(run_dir: str | os.PathLike) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / "result.json").is_file():
        raise CmmError(
            f"No run at {run_dir} (result.json missing).",
            "Fit one first with `cmm-cache fit`, or pass --run PATH to an existing run folder.",
        )
    try:
        result = json.loads((run_dir / "result.json").read_text())
        classes = json.loads((run_dir / "classes.json").read_text())
        provenance = json.loads((run_dir / "provenance.json").read_text())
        with np.load(run_dir / "weights.npz") as z:
            arr = {k: torch.from_numpy(z[k]) for k in z.files}
        head = run_head(result, arr)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CmmError(f"The run at {run_dir} is incomplete or damaged ({e}).", "Fit it again.") from e
    model = head.model if isinstance(head, CMMHead) else None
    return Run(run_dir, result, model, classes["names"], classes.get("wnids"), provenance, head, arr["T0"])


def run_head(result: dict, arrays: dict) -> Head:
    """The head a run folder describes (runs written before heads existed are CMM runs)."""
    if "head" in result:
        return load_head(result["head"]["kind"], arrays, result["head"].get("params", {}))
    cfg = result.get("config", {})
    model = Model(
        arrays.get("W"),
        arrays["T"],
        arrays["T0"],
        bool(cfg.get("normalize_T_in_s", False)),
        cfg.get("fusion", "prob"),
        bool(cfg.get("cmm_only", False)),
    )
    return CMMHead(model, result.get("alpha"))


# ----------------------------------------------------------------------------
# Checks before scoring a run on another cache

IDENTITY_KEYS = ("model", "pretrained", "weights_sha256", "embed_dim")


def check_same_backbone(run: Run, cache: Cache) -> None:
    """Refuse a cache encoded by another model than the run's (provenance identity, feature size)."""
    d = run.embed_dim
    if cache.embed_dim != d:
        raise CmmError(
            f"{cache.path} holds {cache.embed_dim}-d features, the run at {run.path} expects {d}-d.",
            "Evaluate with a cache extracted with the run's backbone.",
        )
    diff = [
        k
        for k in IDENTITY_KEYS
        if k in run.provenance and k in cache.provenance and run.provenance[k] != cache.provenance[k]
    ]
    if diff:
        detail = "; ".join(f"{k}: run {run.provenance[k]!r} vs cache {cache.provenance[k]!r}" for k in diff)
        raise CmmError(
            f"{cache.path} was encoded by another backbone than the run at {run.path} ({detail}).",
            f"Extract the shift set with the run's backbone ({run.result.get('backbone')}).",
        )
