"""Finding run folders on disk: every result.json under a folder, and the one run a command means.

- :func:`resolve_run`: what ``--run VALUE`` means (a run id or a unique prefix, a run folder, or a folder holding
  exactly one run), the one rule behind every command's ``--run`` (the CLI's ``run_option``);
- :func:`list_runs`: the runs under a root with their short ids (`cmm-cache runs ls`);
- :func:`find_run`: the run of (dataset, backbone, method, shots, seed), for `eval` without ``--run``;
- :func:`iter_result_files`: every result.json under a folder (`results merge`).

Every layout is found: ``<backbone>/<method>-<config key>/shot_K-seed_S`` and the older
``<backbone>/shot_K-seed_S`` and ``<backbone>/<method>/shot_K-seed_S``.
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
from cmm_cache.runs.identity import config_changes, result_config_key, run_id
from cmm_cache.runs.store import folder_identity
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


# ----------------------------------------------------------------------------
# Run ids: listing runs and resolving what `--run` was given

_HEX = re.compile(r"[0-9a-f]+")
MIN_PREFIX = 4  # shorter prefixes of a run id are not taken as ids


@dataclass(frozen=True)
class RunInfo:
    """One run folder as `runs ls` shows it."""

    run_id: str | None
    path: Path
    dataset: str
    backbone: str
    method: str
    config_key: str | None
    shots: int
    seed: int
    test_acc: float | None

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "method": self.method,
            "config_key": self.config_key,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "shots": self.shots,
            "seed": self.seed,
            "test_acc": self.test_acc,
            "path": str(self.path),
        }

    def line(self) -> str:
        acc = "-" if self.test_acc is None else f"{self.test_acc:.2f} %"
        return (
            f"{self.run_id or '-'}  {self.method} {self.shots}-shot seed {self.seed}, {self.dataset} × {self.backbone}"
            f", test {acc}: {self.path}"
        )


def folder_run_id(path: Path, result: dict | None = None) -> str | None:
    """The run id of a run folder: recorded in its result.json, else computed from its identity (runs written
    before ids were recorded; :func:`cmm_cache.runs.store.folder_identity`). None when it holds no readable run."""
    if isinstance(result, dict) and isinstance(result.get("run_id"), str) and result["run_id"]:
        return result["run_id"]
    ident = folder_identity(Path(path))
    return run_id(ident) if ident else None


def _info(ref: RunRef) -> RunInfo:
    r = ref.result
    acc = r.get("test_acc")
    return RunInfo(
        run_id=folder_run_id(ref.path, r),
        path=ref.path,
        dataset=str(r.get("dataset") or "?"),
        backbone=str(r.get("backbone") or "?"),
        method=ref.method,
        config_key=ref.config_key,
        shots=ref.shots,
        seed=ref.seed,
        test_acc=float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None,
    )


def _same_dataset(given: str, recorded: str) -> bool:
    from cmm_cache.datasets.manifests import resolve_name
    from cmm_cache.datasets.names import display_name

    if given == recorded or display_name(given) == recorded:
        return True
    a, b = resolve_name(given), resolve_name(recorded)
    return a is not None and a == b


def list_runs(
    runs_root, *, dataset: str | None = None, method: str | None = None, backbone: str | None = None
) -> list[RunInfo]:
    """Every readable run under `runs_root` (any layout), optionally only those of a dataset (its name, alias, or
    your data's short name or path), a method (`_` for `-` accepted) or a backbone; sorted by dataset,
    backbone, method, config, shots and seed."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    want_method = None
    if method:
        from cmm_cache.methods.registry import get_method

        try:
            want_method = get_method(method).name
        except CmmError:
            want_method = method
    runs = []
    for ref in scan_runs(root):
        info = _info(ref)
        if dataset and not _same_dataset(dataset, info.dataset):
            continue
        if want_method and info.method != want_method:
            continue
        if backbone and safe_name(backbone).lower() != safe_name(info.backbone).lower():
            continue
        runs.append(info)
    return sorted(runs, key=lambda i: (i.dataset, i.backbone, i.method, i.config_key or "", i.shots, i.seed))


def _listing(runs: list[RunInfo], limit: int = 20) -> str:
    lines = [f"  {i.line()}" for i in runs[:limit]]
    if len(runs) > limit:
        lines.append(f"  ... and {len(runs) - limit} more (`cmm-cache runs ls` lists them all)")
    return "\n".join(lines)


def resolve_run(value, runs_root) -> Path:
    """The run folder `--run VALUE` means, one rule for every command that takes a run:

    - a run folder (it holds result.json): that folder;
    - a folder holding exactly one run (at any depth): that run; several: an error listing them (with ids);
    - a run id from `cmm-cache runs ls` under `runs_root`, or a unique prefix of one (at least 4 hex digits).

    Anything else is one :class:`CmmError` saying what was looked for and what there is.
    """
    text = str(value).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "result.json").is_file():
            return path
        found = [_info(r) for r in scan_runs(path)]
        if len(found) == 1:
            return found[0].path
        if not found:
            raise CmmError(
                f"No run in {path}: it holds no result.json, nor any folder with one.",
                "Pass a run folder written by `cmm-cache fit`, or a run id from `cmm-cache runs ls`.",
            )
        raise CmmError(
            f"{path} holds {len(found)} runs; which one?\n" + _listing(found),
            "Pass one run's id (the first column) or its folder.",
        )
    if path.exists():
        raise CmmError(f"{path} is a file, not a run folder.", "Pass a run folder or a run id (`cmm-cache runs ls`).")
    ident = text.lower()
    if len(ident) >= MIN_PREFIX and _HEX.fullmatch(ident):
        runs = list_runs(runs_root)
        hits = [i for i in runs if i.run_id and i.run_id.startswith(ident)]
        if len(hits) == 1:
            return hits[0].path
        if len(hits) > 1:
            raise CmmError(
                f"Run id {text} fits {len(hits)} runs:\n" + _listing(hits), "Give more digits of the run id."
            )
        raise CmmError(
            f"No run with id {text} under {runs_root}"
            + ("" if runs else " (no runs there)")
            + ", and no folder of that name.",
            "`cmm-cache runs ls` lists the runs and their ids (--runs-dir / --cache-dir choose where to look).",
        )
    raise CmmError(
        f"No run folder {path}.",
        "Pass a run folder written by `cmm-cache fit`, or a run id from `cmm-cache runs ls`.",
    )
