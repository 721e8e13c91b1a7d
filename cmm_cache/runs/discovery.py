"""Finding run folders on disk: every result.json under a folder, and the one run a command means.

`eval` without ``--run`` and `predict`/`export` with a dataset name use
:func:`find_run`; `results merge` uses :func:`iter_result_files`. Both
layouts are found: ``<backbone>/<method>-<config key>/shot_K-seed_S`` and the
older ``<backbone>/shot_K-seed_S`` and ``<backbone>/<method>/shot_K-seed_S``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cmm_cache.datasets.names import dataset_key
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import result_problems
from cmm_cache.runs.identity import config_changes, result_config_key
from cmm_cache.util.paths import safe_name


@dataclass(frozen=True)
class RunRef:
    """A run folder found on disk, with the fields that tell runs apart."""

    path: Path
    method: str
    config_key: str | None
    shots: int
    seed: int
    result: dict


def iter_result_files(folder: Path) -> Iterator[Path]:
    """Every result.json under `folder` (itself included), sorted; hidden folders (temporary
    folders of a write in progress, a replaced run being removed) are skipped."""
    folder = Path(folder)
    if (folder / "result.json").is_file():
        yield folder / "result.json"
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "result.json" in filenames:
            yield Path(dirpath) / "result.json"


def scan_runs(folder: Path) -> list[RunRef]:
    """The readable runs under `folder` (damaged result.json files are left out here)."""
    refs = []
    for f in iter_result_files(folder):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
            if result_problems(r):
                continue
            refs.append(
                RunRef(f.parent, r.get("method") or "cmm", result_config_key(r), int(r["shots"]), int(r["seed"]), r)
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return refs


def dataset_dirs(runs_root: Path, dataset: str) -> list[Path]:
    """Run folders of a dataset name: its key's folder, or for a bare short name such as ``dtd10``
    the ``dtd10-<hash>`` folders of that name (your own data)."""

    exact = Path(runs_root) / dataset_key(dataset)
    if exact.is_dir():
        return [exact]
    pat = re.compile(re.escape(safe_name(dataset)) + r"-[0-9a-f]{8}")
    root = Path(runs_root)
    return sorted(p for p in root.iterdir() if p.is_dir() and pat.fullmatch(p.name)) if root.is_dir() else []


def describe(ref: RunRef) -> str:
    changes = config_changes(ref.result)
    what = ", ".join(f"{k}={v}" for k, v in sorted(changes.items())) or "default options"
    return f"{ref.path}  ({ref.method} {ref.config_key}: {what})"


def find_run(
    runs_root,
    dataset: str,
    backbone: str | None = None,
    *,
    method: str = "cmm",
    shots: int | None = None,
    seed: int = 1,
    prefer_backbone: str | None = None,
) -> RunRef:
    """The run of (dataset, backbone, method, shots, seed) under `runs_root`.

    Without `backbone`: the only one fitted for the dataset, else
    `prefer_backbone` if fitted. Without `shots`: the largest K fitted with
    `seed`. Among several configurations the method's default one is taken;
    without it, one error lists the candidates (pass ``--run PATH``).
    """

    root = Path(runs_root)
    k_hint = shots or 16
    folders = dataset_dirs(root, dataset)
    if len(folders) > 1:
        raise CmmError(
            f"Several datasets are named {dataset}: {', '.join(p.name for p in folders)}.",
            "Pass --dataset with the folder's path, or --run PATH.",
        )
    fitted = sorted(p.name for p in folders[0].iterdir() if p.is_dir()) if folders else []
    if not fitted:
        raise CmmError(
            f"No fitted run for {dataset} under {root}.",
            f"Fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME --shots {k_hint}`, or pass --run PATH.",
        )
    if backbone is None:
        if len(fitted) == 1:
            backbone = fitted[0]
        elif prefer_backbone is not None and safe_name(prefer_backbone) in fitted:
            backbone = prefer_backbone
        else:
            raise CmmError(
                f"Which backbone? Runs for {dataset} exist for: {', '.join(fitted)}.",
                f"Pass --backbone NAME, or fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME "
                f"--shots {k_hint}`.",
            )
    where = folders[0] / safe_name(backbone)
    refs = [r for r in scan_runs(where) if r.method == method and r.seed == int(seed)] if where.is_dir() else []
    if shots is None and refs:
        shots = max(r.shots for r in refs)
    found = [r for r in refs if r.shots == int(shots or k_hint)]
    if not found:
        have = sorted({(r.method, r.shots, r.seed) for r in scan_runs(where)}) if where.is_dir() else []
        listing = ", ".join(f"{m} {k}-shot seed {s}" for m, k, s in have) or "none"
        raise CmmError(
            f"No {method} run of {dataset} × {backbone} with {shots or k_hint} shots, seed {seed} under {root}.",
            f"Runs there: {listing}. Fit it: `cmm-cache fit --dataset {dataset} --backbone {backbone} "
            f"--method {method} --shots {shots or k_hint} --seed {seed}`, or pass --run PATH.",
        )
    if len({r.config_key for r in found}) == 1:
        return _newest(found)
    default = [r for r in found if not config_changes(r.result)]
    if len({r.config_key for r in default}) == 1:
        return _newest(default)
    raise CmmError(
        f"Several configurations of {method} {shots}-shot seed {seed} were fitted for {dataset} × {backbone}:\n  "
        + "\n  ".join(describe(r) for r in found),
        "Pass --run PATH to choose one.",
    )


def _newest(refs: list[RunRef]) -> RunRef:
    """Of folders holding one config (an old-layout folder and its new one), the one written last."""
    return max(refs, key=lambda r: (r.path / "result.json").stat().st_mtime_ns)
