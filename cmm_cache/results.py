"""Runs as artifacts: fit one (shots, seed) of a cache, write its folder, read it back, merge.

A run folder (written to a temporary sibling, then renamed, so a folder at the
final path is always complete)::

    result.json        DESIGN.md "Results" fields (+ cache path, classes count)
    weights.npz        W (absent for the no-map ablation), T, T0 (so a shift eval
                       needs only the run and the shift cache)
    classes.json       class names and WordNet ids of the run's class space
    provenance.json    the cache's provenance (model identity for shift checks)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .cache import Cache
from .errors import CmmError
from .evaluate import Model, evaluate_head, split_features
from .fit import FitConfig
from .heads import CMMHead, Head, load_head

RESULT_FIELDS = [
    "dataset",
    "backbone",
    "shots",
    "seed",
    "alpha",
    "val_acc",
    "test_acc",
    "zero_shot_test_acc",
    "cmm_only_test_acc",
    "fit_seconds",
    "iterations",
]


def versions() -> dict:
    import h5py

    return {
        "cmm-cache": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }


def resolve_device(device: str | None) -> torch.device:
    """auto -> cuda if available else cpu; a clear error for a CUDA device that is not there."""
    from .backbones import resolve_device as resolve  # the one rule extract uses too

    return torch.device(resolve(device))


def run_name(shots: int, seed: int) -> str:
    from .fewshot import group_name

    return group_name(shots, seed)  # a run folder is named like the few-shot group it was fitted on


def default_run_dir(runs_root: Path, dataset: str, backbone: str, shots: int, seed: int) -> Path:
    from .paths import dataset_key, safe_name

    return Path(runs_root) / dataset_key(dataset) / safe_name(backbone) / run_name(shots, seed)


# ----------------------------------------------------------------------------
# Fit one run


def fit_run(
    cache: Cache,
    shots: int,
    seed: int,
    cfg: FitConfig | None = None,
    templates: str | None = None,
    progress: Callable[[int, float | None], None] | None = None,
    *,
    method: str = "cmm",
    options: dict | None = None,
    device: str | torch.device | None = None,
) -> tuple[dict, dict]:
    """Fit `method` on the (shots, seed) subset of `cache`, select its hyper-parameters
    on the val subset, evaluate on test. Returns (result dict, arrays for weights.npz).

    A :class:`FitConfig` as `cfg` is CMM's options (the historical signature);
    otherwise `options` are the method's (see :mod:`cmm_cache.methods`).
    """
    from .methods import fit_data, get_method

    m = get_method(method)
    if cfg is not None:
        if method != "cmm":
            raise CmmError("A FitConfig configures CMM only; pass options=... for other methods.")
        options = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "device")}
        device = device or cfg.device
    opts = m.resolve(options)
    dev = torch.device(device or "cpu")
    data = fit_data(cache, shots, seed, templates, dev)
    cb = None if progress is None else (lambda done, total, loss: progress(done, loss))
    fitted = m.fit(data, opts, progress=cb)
    head = fitted.head

    # Test is read only now, after everything was chosen on val.
    x_te, y_te = split_features(cache.split("test"), None, dev)
    acc = evaluate_head(head, x_te, y_te, zero_shot_T0=data.T0)
    hparams = dict(fitted.hparams)
    kind, params = head.kind, head.state()[1]
    result = {
        "dataset": cache.dataset,
        "backbone": cache.backbone,
        "method": m.name,
        "shots": int(shots),
        "seed": int(seed),
        "alpha": hparams.get("alpha"),
        "hparams": hparams,
        "val_acc": fitted.val_acc,
        "test_acc": acc["acc"],
        "zero_shot_test_acc": acc.get("zero_shot_acc"),
        "cmm_only_test_acc": acc.get("cmm_only_acc"),
        "fit_seconds": round(fitted.fit_seconds, 3),
        "iterations": fitted.iterations,
        "config": {
            "method": m.name,
            **opts,
            "seed": int(seed),
            "device": str(dev),
            "templates": templates or cache.default_templates,
        },  # fmt: skip
        "head": {"kind": kind, "params": params},
        "cache_provenance_sha256": cache.provenance_sha256,
        "versions": versions(),
        "cache": str(Path(cache.path).resolve()),
        "num_classes": cache.num_classes,
        "num_train_samples": int(len(data.x_train)),
        **{k: v for k, v in fitted.extra.items() if k not in ("head",)},
    }
    arrays = dict(head.state()[0])
    arrays.setdefault("T0", data.T0.cpu().numpy())  # every run keeps the zero-shot classifier
    return result, arrays


# ----------------------------------------------------------------------------
# The run folder


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
    except (OSError, ValueError, KeyError) as e:
        raise CmmError(f"The run at {run_dir} is incomplete or damaged ({e}).", "Fit it again.") from e
    head = run_head(result, arr)
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
# Many runs: summary table, merge, CSV


def summarize(results: list[dict]) -> list[dict]:
    """Mean ± std (sample std, 0 for one run) per (dataset, backbone, shots)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["backbone"], int(r["shots"])), []).append(r)
    rows = []
    for (ds, bb, k), rs in sorted(groups.items()):
        row = {"dataset": ds, "backbone": bb, "shots": k, "runs": len(rs), "seeds": sorted(int(r["seed"]) for r in rs)}
        for f in ("test_acc", "zero_shot_test_acc", "cmm_only_test_acc", "val_acc"):
            vals = [float(r[f]) for r in rs if r.get(f) is not None]
            row[f + "_mean"] = round(statistics.fmean(vals), 3) if vals else None
            row[f + "_std"] = round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def read_results(run_dirs) -> list[dict]:
    """result.json of each run folder (a folder holding run folders is searched)."""
    out = []
    for d in run_dirs:
        d = Path(d)
        found = [d / "result.json"] if (d / "result.json").is_file() else sorted(d.rglob("result.json"))
        found = [f for f in found if not any(p.startswith(".") for p in f.relative_to(d).parts[:-1])]
        if not found:
            raise CmmError(f"No run (result.json) in {d}.", "Pass run folders written by `cmm-cache fit`.")
        for f in found:
            r = json.loads(f.read_text())
            r["run"] = str(f.parent)
            out.append(r)
    return out


def write_csv(results: list[dict], path: str | os.PathLike) -> Path:
    """One row per run: the Results fields, the provenance hash and the run folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = RESULT_FIELDS + ["cache_provenance_sha256", "run"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({c: r.get(c) for c in cols})
    return path


# ----------------------------------------------------------------------------
# Checks before scoring a run on another cache

IDENTITY_KEYS = ("model", "pretrained", "weights_sha256", "embed_dim")


def check_same_backbone(run: Run, cache: Cache) -> None:
    """Refuse a cache encoded by another model than the run's (provenance identity, feature size)."""
    d = int(run.model.T.shape[1])
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
