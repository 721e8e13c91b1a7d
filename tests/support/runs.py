"""Tagged run folders for the run-store tests: a run's tag is in its result.json (``fit_seconds``) and in
every value of its T0, so a reader that mixed the files of two runs sees two tags."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cmm_cache.heads.run_folder import load_run
from cmm_cache.runs.store import write_run

CACHE = SimpleNamespace(classnames=["a", "b", "c"], wnids=None, provenance={"model": "synthetic", "embed_dim": 4})


def tagged_run(tag: float) -> tuple[dict, dict]:
    result = {
        "dataset": "d",
        "backbone": "b",
        "method": "zero-shot",
        "shots": 1,
        "seed": 1,
        "test_acc": 50.0,
        "fit_seconds": float(tag),
        "head": {"kind": "zero-shot", "params": {}},
        "config": {},
    }
    return result, {"T0": np.full((3, 4), float(tag) / 100.0, np.float32)}


def save(path, tag: float) -> None:
    result, arrays = tagged_run(tag)
    write_run(path, result, arrays, CACHE)


def tag_of(run) -> float | None:
    """The tag of a loaded run, or None when its files come from two different runs."""
    tag = run.result["fit_seconds"]
    return tag if np.allclose(run.T0.numpy(), tag / 100.0) else None


def read_tag(path) -> float:
    """The tag of the complete run at `path` (its files must agree)."""
    run = load_run(path)
    tag = tag_of(run)
    assert tag is not None, "result.json and weights.npz from two different runs"
    assert run.classnames == ["a", "b", "c"]
    return tag
