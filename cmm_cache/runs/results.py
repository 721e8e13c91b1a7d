"""Many runs: read their result.json files, summarize (mean ± std per configuration and K), write CSV.

Rows are grouped by (dataset, backbone, method, config key, shots): runs of
different configurations are never averaged into one mean. A result.json that
cannot be read, or lacks the fields a summary needs, is reported by path and
left out.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import RUN_REQUIRED, result_problems
from cmm_cache.runs.discovery import folder_run_id, iter_result_files
from cmm_cache.runs.identity import result_config_key
from cmm_cache.util.atomic import atomic_path

RESULT_FIELDS = [
    "dataset",
    "backbone",
    "method",
    "config_key",
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
ACC_FIELDS = ("test_acc", "zero_shot_test_acc", "cmm_only_test_acc", "val_acc")
RESULTS_REQUIRED = (*RUN_REQUIRED, "test_acc")


def group_key(r: dict) -> tuple:
    """What a summary row stands for: runs of one configuration and K (seeds vary within it)."""
    return (r["dataset"], r["backbone"], r.get("method") or "cmm", result_config_key(r) or "-", int(r["shots"]))


def summarize(results: list[dict]) -> list[dict]:
    """Mean ± std (sample std, 0 for one run) per (dataset, backbone, method, config key, shots)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(group_key(r), []).append(r)
    rows = []
    for (ds, bb, method, key, k), rs in sorted(groups.items()):
        row = {
            "dataset": ds,
            "backbone": bb,
            "method": method,
            "config_key": key,
            "shots": k,
            "runs": len(rs),
            "seeds": sorted(int(r["seed"]) for r in rs),
        }
        for f in ACC_FIELDS:
            vals = [float(r[f]) for r in rs if r.get(f) is not None]
            row[f + "_mean"] = round(statistics.fmean(vals), 3) if vals else None
            row[f + "_std"] = round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _problem(r) -> str | None:
    """Why a parsed result.json cannot be summarized (None when it can): the one set of result.json checks
    (:func:`cmm_cache.heads.run_folder.result_problems`), with a test accuracy required."""
    problems = result_problems(r, RESULTS_REQUIRED)
    return "; ".join(problems) if problems else None


def scan_results(run_dirs) -> tuple[list[dict], list[dict]]:
    """(results, damaged) of run folders (a folder holding run folders is searched).

    Each result gets ``run`` (its folder), ``run_id`` and ``config_key``; each damaged
    entry is ``{"path": ..., "error": ...}``.
    """
    out, damaged = [], []
    for d in run_dirs:
        d = Path(d)
        found = list(iter_result_files(d)) if d.is_dir() else []
        if not found:
            raise CmmError(f"No run (result.json) in {d}.", "Pass run folders written by `cmm-cache fit`.")
        for f in found:
            try:
                r = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                damaged.append({"path": str(f), "error": f"{type(e).__name__}: {e}"})
                continue
            why = _problem(r)
            if why:
                damaged.append({"path": str(f), "error": why})
                continue
            r["run"] = str(f.parent)
            r["run_id"] = folder_run_id(f.parent, r)
            r["config_key"] = result_config_key(r)
            r.setdefault("method", "cmm")
            out.append(r)
    return out, damaged


def read_results(run_dirs) -> list[dict]:
    """The readable results of :func:`scan_results` (damaged files left out)."""
    return scan_results(run_dirs)[0]


def write_csv(results: list[dict], path: str | os.PathLike) -> Path:
    """One row per run: the Results fields, the run id, the provenance hash and the run folder (written
    atomically)."""

    path = Path(path)
    cols = RESULT_FIELDS + ["run_id", "cache_provenance_sha256", "run"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({c: r.get(c) for c in cols})
    return path
