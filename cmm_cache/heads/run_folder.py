"""Reading a run folder: what a fitted run *is* at inference (its head, classes and encoder provenance).

A run folder is written by :mod:`cmm_cache.runs.store`; this module reads it without any training code, so
``eval``, ``predict`` and ``export`` work from the folder alone (no cache needed)::

    <run folder>/
        result.json      accuracies, chosen hyper-parameters, the resolved config and its key, versions
        weights.npz      the head's arrays (CMM: W unless no-map, T, T0), always T0
        classes.json     class names and WordNet ids of the run's class space
        provenance.json  the cache's provenance: which backbone, weights and preprocessing
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.base import Head, load_head
from cmm_cache.heads.cmm import CMMHead, Model


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
