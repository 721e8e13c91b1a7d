"""The benchmark report: the paper's tables rebuilt from run folders, with the published numbers beside ours.

    from cmm_cache.analysis.report import report
    paths = report(["~/.cache/cmm-cache/runs"], "report/")   # report.md, report.html, *.csv, accuracy_vs_shots*.png

Works on any runs (one dataset, one method, your own folders): each table is written where runs for it exist.

* **Table 1** (per backbone): per method (and configuration), test accuracy averaged over datasets for each
  shot count, mean ± sample std over seeds (the std of the per-seed dataset averages). A cell averaged over
  fewer datasets than the table holds says which ones, in a numbered note: never a silent average of a subset.
  The zero-shot row (0 shots) is CLIP's zero-shot accuracy every run records.
* **Per-dataset** tables and **accuracy vs shots** plots: one panel per dataset plus the average (zero-shot
  as a marker at x = 0; error bars: std over seeds). The average panel draws only cells over every dataset.
* **Table 2** ImageNet 16-shot per backbone; **Table 3** ImageNet → shift sets, from evaluations kept beside
  the runs (``cmm-cache eval --shift NAME --save``); **Table 4** fit time per method with the device;
  **Table 6** the CMM ablations. Each only where such runs exist.
* **Published numbers** (:mod:`cmm_cache.analysis.published`): for every method we ran, the figures its
  authors (or the CMM paper) report: theirs, ours where ours covers the same datasets, backbone and shots,
  the difference, their selection tag and source. Averages of methods we did not run are listed too.

What is read is validated (:func:`load_runs`): a result.json or an evaluation that is unreadable, has fields
of the wrong type or accuracies outside [0, 100] is left out and listed in the report with the reason; two
folders holding one run (same identity) count once. Runs of different configurations of one method are
never averaged together: each configuration is its own row, labelled with its config key.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from cmm_cache.analysis import published as pub
from cmm_cache.datasets.manifests import resolve_name
from cmm_cache.datasets.registry import PAPER_DATASETS
from cmm_cache.errors import CmmError
from cmm_cache.methods.registry import discover
from cmm_cache.runs.discovery import iter_result_files
from cmm_cache.runs.results import scan_results
from cmm_cache.util.atomic import atomic_path, write_text
from cmm_cache.util.outputs import check_output_path

SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")  # Table 3's columns, in the paper's order
ABLATIONS = ("cmm", "cmm-no-map", "cmm-no-triplet", "cmm-logits-only")
EVAL_SCHEMA = "cmm-eval/1"


# ----------------------------------------------------------------------------
# Reading and validating runs


@dataclass
class RunRecord:
    """One validated run (what the report uses of its result.json), with its kept evaluations."""

    dataset: str  # canonical name for registered datasets, else the run's short name
    backbone: str
    method: str
    config_key: str
    shots: int
    seed: int
    test_acc: float
    zero_shot: float | None
    fit_seconds: float | None
    reused_seconds: float  # time of shared results it reused (computed by another method of its subset)
    device: str
    path: str
    run_id: str | None
    evals: dict = field(default_factory=dict)  # shift dataset -> test accuracy (eval --shift --save)

    @property
    def arm(self) -> tuple[str, str]:
        return (self.method, self.config_key)


def _acc(v, name: str, optional: bool = False):
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError(f"{name} {v!r} is not an accuracy in [0, 100]")
    return float(v)


def _record(r: dict) -> RunRecord:
    """A RunRecord from a result.json that :func:`~cmm_cache.runs.results.scan_results` accepted; ValueError
    says what else is wrong."""
    for key in ("dataset", "backbone", "method"):
        if not (isinstance(r.get(key), str) and r[key].strip()):
            raise ValueError(f"field {key!r} missing or empty")
    if int(r["shots"]) < 1 or int(r["seed"]) < 0:
        raise ValueError(f"shots {r['shots']!r} / seed {r['seed']!r} out of range")
    secs = r.get("fit_seconds")
    if secs is not None and (
        isinstance(secs, bool) or not isinstance(secs, int | float) or not math.isfinite(secs) or secs < 0
    ):
        raise ValueError(f"fit_seconds {secs!r} is not a time")
    reused = 0.0
    shared = r.get("shared_fits") or []
    if not isinstance(shared, list):
        raise ValueError("shared_fits is not a list")
    for s in shared:
        sec = s.get("seconds") if isinstance(s, dict) else None
        if isinstance(sec, bool) or not isinstance(sec, int | float) or not math.isfinite(sec) or sec < 0:
            raise ValueError(f"shared_fits entry {s!r} is malformed")
        if s.get("reused"):
            reused += float(sec)
    cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
    key = r.get("config_key")
    return RunRecord(
        dataset=resolve_name(r["dataset"]) or r["dataset"],
        backbone=r["backbone"],
        method=r["method"],
        config_key=str(key) if key else "-",
        shots=int(r["shots"]),
        seed=int(r["seed"]),
        test_acc=_acc(r["test_acc"], "test_acc"),
        zero_shot=_acc(r.get("zero_shot_test_acc"), "zero_shot_test_acc", optional=True),
        fit_seconds=None if secs is None else float(secs),
        reused_seconds=reused,
        device=str(cfg.get("device") or "?"),
        path=str(r["run"]),
        run_id=r.get("run_id") if isinstance(r.get("run_id"), str) else None,
    )


def _evals(rec: RunRecord, left_out: list[dict]) -> dict:
    """The evaluations kept beside a run (``<run>/evals/*.json``) that belong to it, by shift dataset."""
    out = {}
    folder = Path(rec.path) / "evals"
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("schema") != EVAL_SCHEMA:
                raise ValueError(f"not a {EVAL_SCHEMA} document")
            if doc.get("run_id") != rec.run_id or rec.run_id is None:
                raise ValueError("it belongs to another run than the one now in the folder (refitted?)")
            name = doc.get("dataset_resolved")
            if not (isinstance(name, str) and name):
                raise ValueError("dataset_resolved missing")
            out[resolve_name(name) or name] = _acc(doc.get("test_acc"), "test_acc")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            left_out.append({"path": str(f), "error": str(e)})
    return out


def load_runs(run_dirs) -> tuple[list[RunRecord], list[dict]]:
    """(runs, left out) of run folders or folders holding them; see the module docstring."""
    run_dirs = [Path(d).expanduser() for d in run_dirs]
    for d in run_dirs:
        if not d.is_dir() or next(iter_result_files(d), None) is None:
            raise CmmError(
                f"No run (result.json) in {d}.", "Pass folders of runs written by fit, compare or benchmark."
            )
    raw, damaged = scan_results(run_dirs)
    left_out = [{"path": d["path"], "error": d["error"]} for d in damaged]
    seen: dict[tuple, str] = {}
    runs = []
    for r in sorted(raw, key=lambda r: r["run"]):
        try:
            rec = _record(r)
        except (ValueError, TypeError) as e:
            left_out.append({"path": str(Path(r["run"]) / "result.json"), "error": str(e)})
            continue
        ident = (rec.dataset, rec.backbone, rec.method, rec.config_key, rec.shots, rec.seed)
        if ident in seen:
            if Path(seen[ident]).resolve() != Path(rec.path).resolve():
                left_out.append({"path": rec.path, "error": f"the same run as {seen[ident]} (counted once)"})
            continue
        seen[ident] = rec.path
        rec.evals = _evals(rec, left_out)
        runs.append(rec)
    if not runs:
        raise CmmError(
            "No readable run in " + ", ".join(str(d) for d in run_dirs) + ".",
            "Every result.json there was left out: " + "; ".join(f"{d['path']}: {d['error']}" for d in left_out[:5]),
        )
    return runs, left_out


# ----------------------------------------------------------------------------
# Numbers


def _r(x, digits: int = 4):
    return None if x is None else round(x, digits)


def _fmean(xs):
    return statistics.fmean(xs) if xs else None


def _std(xs):
    return statistics.stdev(xs) if len(xs) > 1 else None


def dataset_order(names) -> list[str]:
    """The paper's order for its datasets, then the others alphabetically."""
    names = set(names)
    return [d for d in PAPER_DATASETS if d in names] + sorted(names - set(PAPER_DATASETS))


def _rank(method: str) -> int:
    m = discover().get(method)
    return m.rank if m is not None else 1000


def arm_order(arms) -> list[tuple[str, str]]:
    return sorted(set(arms), key=lambda a: (_rank(a[0]), a[0], a[1]))


def arm_labels(runs: list[RunRecord]) -> dict[tuple[str, str], str]:
    """'cmm', or 'cmm [1a2b3c4d]' where one method has runs of several configurations."""
    keys: dict[str, set] = {}
    for r in runs:
        keys.setdefault(r.method, set()).add(r.config_key)
    return {r.arm: r.method if len(keys[r.method]) == 1 else f"{r.method} [{r.config_key}]" for r in runs}


@dataclass
class Cell:
    """Accuracy of one method over a set of datasets at one shot count, over seeds."""

    mean: float | None
    std: float | None  # sample std over seeds of the dataset-averaged accuracy (None: one seed, or seeds differ)
    datasets: list[str]
    seeds: list[int]  # seeds every dataset of the cell has (the std is over these)
    runs: int
    seeds_differ: bool = False


def average_cell(acc: dict[str, dict[int, float]]) -> Cell:
    """`acc[dataset][seed]` -> the mean over datasets of each dataset's mean over its seeds; the std over
    seeds of the per-seed dataset average when every dataset has the same seeds."""
    ds = dataset_order(d for d, by_seed in acc.items() if by_seed)
    if not ds:
        return Cell(None, None, [], [], 0)
    mean = statistics.fmean(statistics.fmean(acc[d].values()) for d in ds)
    seed_sets = {tuple(sorted(acc[d])) for d in ds}
    runs = sum(len(acc[d]) for d in ds)
    if len(seed_sets) == 1:
        seeds = list(next(iter(seed_sets)))
        per_seed = [statistics.fmean(acc[d][s] for d in ds) for s in seeds]
        return Cell(mean, _std(per_seed), ds, seeds, runs)
    common = sorted(set.intersection(*(set(acc[d]) for d in ds)))
    return Cell(mean, None, ds, common, runs, seeds_differ=True)


def fmt(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "—"
    s = f"{x:.2f}"
    if std is not None:
        s += f" ± {std:.2f}"
    return s


# ----------------------------------------------------------------------------
# Tables: one structure, rendered as Markdown, HTML and CSV


@dataclass
class Table:
    key: str  # file stem of its CSV
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    csv: list[dict] = field(default_factory=list)
    about: str = ""


class Notes:
    """Numbered notes of one table: the same text gets the same number."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f" [{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i + 1}] {t}" for i, t in enumerate(self.texts)]


def _acc_by(runs: list[RunRecord], arm, shots: int, datasets=None) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        if r.arm == arm and r.shots == shots and (datasets is None or r.dataset in datasets):
            out.setdefault(r.dataset, {})[r.seed] = r.test_acc
    return out


def zero_shot_by(runs: list[RunRecord]) -> tuple[dict[str, float], list[str]]:
    """Zero-shot accuracy per dataset (of one backbone's runs): what the runs record; where runs disagree
    (other template sets) the zero-shot method's own runs decide, and a note says so."""
    vals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r.zero_shot is not None:
            vals.setdefault(r.dataset, {}).setdefault("zs" if r.method == "zero-shot" else "any", []).append(
                r.zero_shot
            )
    out, notes = {}, []
    for d, v in vals.items():
        pool = v.get("zs") or v.get("any")
        if max(pool) - min(pool) > 1e-6:
            notes.append(f"{d}: runs record different zero-shot accuracies (other template sets); the mean is shown")
        out[d] = statistics.fmean(pool)
    return out, notes


def averaged_table(
    key: str, title: str, runs: list[RunRecord], arms, labels: dict, about: str, zero_shot: bool = True
) -> tuple[Table, dict]:
    """Table 1 / Table 6 of one backbone's runs: per arm and shot count, the average over datasets."""
    datasets = dataset_order({r.dataset for r in runs})
    shots = sorted({r.shots for r in runs if r.arm in arms})
    notes = Notes()
    zs, zs_notes = zero_shot_by(runs)
    head = ["method", *(["0-shot"] if zero_shot else []), *[f"{k}-shot" for k in shots], "datasets"]
    rows, flat, cells = [], [], {}

    def mark(cell: Cell) -> str:
        text = ""
        missing = [d for d in datasets if d not in cell.datasets]
        if missing and cell.datasets:
            text += notes.mark(f"averaged over {', '.join(cell.datasets)} only (no runs for {', '.join(missing)})")
        if cell.seeds_differ:
            text += notes.mark("datasets were run with different seeds: no std over seeds")
        return text

    if zero_shot and zs:
        c = Cell(statistics.fmean(zs[d] for d in dataset_order(zs)), None, dataset_order(zs), [], 0)
        cells[("zero-shot CLIP", "-"), 0] = c
        rows.append(["zero-shot CLIP", fmt(c.mean) + mark(c), *["" for _ in shots], str(len(c.datasets))])
        flat.append(_flat(key, "zero-shot CLIP", "-", 0, c, datasets))
    for arm in arm_order(arms):
        row = [labels[arm]] + ([""] if zero_shot else [])
        n = set()
        for k in shots:
            c = average_cell(_acc_by(runs, arm, k))
            cells[arm, k] = c
            n |= set(c.datasets)
            row.append(fmt(c.mean, c.std) + (mark(c) if c.mean is not None else ""))
            if c.mean is not None:
                flat.append(_flat(key, arm[0], arm[1], k, c, datasets))
        rows.append(row + [str(len(n))])
    seeds = sorted({r.seed for r in runs if r.arm in arms})
    note_lines = notes.lines() + zs_notes
    text = f"{about} Test accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))}; {len(datasets)} datasets: "
    return Table(key, title, head, rows, note_lines, flat, text + ", ".join(datasets) + "."), cells


def _flat(key, method, config_key, shots, c: Cell, datasets) -> dict:
    return {
        "table": key,
        "method": method,
        "config_key": config_key,
        "shots": shots,
        "mean": None if c.mean is None else round(c.mean, 4),
        "std": None if c.std is None else round(c.std, 4),
        "datasets": ";".join(c.datasets),
        "datasets_missing": ";".join(d for d in datasets if d not in c.datasets),
        "seeds": ";".join(map(str, c.seeds)),
        "runs": c.runs,
    }


def per_dataset_table(backbone: str, runs: list[RunRecord], labels: dict) -> Table:
    shots = sorted({r.shots for r in runs})
    zs, _ = zero_shot_by(runs)
    head = ["dataset", "method", "0-shot", *[f"{k}-shot" for k in shots], "seeds"]
    rows, flat = [], []
    for d in dataset_order({r.dataset for r in runs}):
        sub = [r for r in runs if r.dataset == d]
        if d in zs:
            rows.append([d, "zero-shot CLIP", fmt(zs[d]), *["" for _ in shots], ""])
            flat.append(
                {
                    "backbone": backbone,
                    "dataset": d,
                    "method": "zero-shot CLIP",
                    "config_key": "-",
                    "shots": 0,
                    "mean": round(zs[d], 4),
                    "std": None,
                    "seeds": "",
                }
            )
        for arm in arm_order(r.arm for r in sub):
            row, seeds = [d, labels[arm], ""], set()
            for k in shots:
                accs = {r.seed: r.test_acc for r in sub if r.arm == arm and r.shots == k}
                seeds |= set(accs)
                vals = [accs[s] for s in sorted(accs)]
                row.append(fmt(_fmean(vals), _std(vals)))
                if vals:
                    flat.append(
                        {
                            "backbone": backbone,
                            "dataset": d,
                            "method": arm[0],
                            "config_key": arm[1],
                            "shots": k,
                            "mean": _r(_fmean(vals)),
                            "std": _r(_std(vals)),
                            "seeds": ";".join(map(str, sorted(accs))),
                        }
                    )
            rows.append(row + [",".join(map(str, sorted(seeds)))])
    return Table(
        f"per_dataset-{backbone}",
        f"Per dataset — {backbone}",
        head,
        rows,
        [],
        flat,
        "Test accuracy (%), mean ± std over the seeds listed.",
    )


def table2(runs: list[RunRecord], labels: dict) -> Table | None:
    sub = [r for r in runs if r.dataset == "imagenet" and r.shots == 16]
    if not sub:
        return None
    bbs = sorted({r.backbone for r in sub})
    rows, flat = [], []
    for arm in arm_order(r.arm for r in sub):
        row = [labels[arm]]
        for b in bbs:
            vals = [r.test_acc for r in sorted(sub, key=lambda r: r.seed) if r.arm == arm and r.backbone == b]
            row.append(fmt(_fmean(vals), _std(vals)))
            if vals:
                flat.append(
                    {
                        "method": arm[0],
                        "config_key": arm[1],
                        "backbone": b,
                        "mean": _r(_fmean(vals)),
                        "std": _r(_std(vals)),
                        "runs": len(vals),
                    }
                )
        rows.append(row)
    return Table(
        "table2",
        "Table 2 — ImageNet, 16 shots, per backbone",
        ["method", *bbs],
        rows,
        [],
        flat,
        "Test accuracy (%), mean ± std over seeds.",
    )


def table3(runs: list[RunRecord], labels: dict) -> Table | None:
    sub = [r for r in runs if r.dataset == "imagenet" and r.evals]
    if not sub:
        return None
    shifts = [s for s in SHIFTS if any(s in r.evals for r in sub)] + sorted(
        {s for r in sub for s in r.evals} - set(SHIFTS)
    )
    head = ["backbone", "method", "shots", "imagenet", *shifts, "average of targets"]
    rows, flat = [], []
    for b, arm, k in sorted(
        {(r.backbone, r.arm, r.shots) for r in sub}, key=lambda t: (t[0], _rank(t[1][0]), t[1], t[2])
    ):
        group = [r for r in sub if (r.backbone, r.arm, r.shots) == (b, arm, k)]
        row = [b, labels[arm], str(k)]
        src = [r.test_acc for r in group]
        row.append(fmt(_fmean(src), _std(src)))
        means = []
        for s in shifts:
            vals = [r.evals[s] for r in group if s in r.evals]
            row.append(fmt(_fmean(vals), _std(vals)) + (f" (n={len(vals)})" if len(vals) != len(group) else ""))
            if vals:
                means.append(_fmean(vals))
                flat.append(
                    {
                        "backbone": b,
                        "method": arm[0],
                        "config_key": arm[1],
                        "shots": k,
                        "target": s,
                        "mean": _r(_fmean(vals)),
                        "std": _r(_std(vals)),
                        "runs": len(vals),
                    }
                )
        row.append(fmt(_fmean(means)) if len(means) == len(SHIFTS) == len(shifts) else "—")
        rows.append(row)
    return Table(
        "table3",
        "Table 3 — ImageNet → distribution shifts",
        head,
        rows,
        ["The average of targets is shown only where all four shift sets were evaluated."],
        flat,
        "Test accuracy (%) of ImageNet runs on the shift sets (kept by `cmm-cache eval --shift NAME --save`), "
        "mean ± std over seeds; n = runs evaluated where fewer than the runs of the row.",
    )


def table4(runs: list[RunRecord], labels: dict) -> Table:
    rows, flat = [], []
    for b in sorted({r.backbone for r in runs}):
        sub = [r for r in runs if r.backbone == b]
        for arm in arm_order(r.arm for r in sub):
            group = [r for r in sub if r.arm == arm and r.fit_seconds is not None]
            if not group:
                continue
            secs = [r.fit_seconds for r in group]
            alone = [r.fit_seconds + r.reused_seconds for r in group]
            devices = ", ".join(sorted({r.device for r in group}))
            reused = sum(1 for r in group if r.reused_seconds > 0)
            rows.append(
                [
                    b,
                    labels[arm],
                    str(len(group)),
                    f"{statistics.fmean(secs):.2f}",
                    f"{sum(secs):.1f}",
                    f"{statistics.fmean(alone):.2f}" + (f" ({reused} reused)" if reused else ""),
                    devices,
                ]
            )
            flat.append(
                {
                    "backbone": b,
                    "method": arm[0],
                    "config_key": arm[1],
                    "runs": len(group),
                    "fit_seconds_mean": round(statistics.fmean(secs), 4),
                    "fit_seconds_total": round(sum(secs), 3),
                    "alone_seconds_mean": round(statistics.fmean(alone), 4),
                    "runs_reusing": reused,
                    "devices": devices,
                }
            )
    return Table(
        "table4",
        "Table 4 — fit time per method",
        ["backbone", "method", "runs", "fit s/run", "fit s total", "s/run alone", "device"],
        rows,
        [
            "fit s: the method's own fitting time as recorded in each run (test scoring excluded). 'alone' adds the "
            "time of results it reused from another method of its subset (the cross-modal grid): what it costs "
            "when fitted by itself."
        ],
        flat,
        "Times depend on the machine and on what else ran; they differ between repeats of the same benchmark.",
    )


# ----------------------------------------------------------------------------
# Published numbers beside ours


def published_tables(runs: list[RunRecord], t1_cells: dict, labels: dict) -> tuple[Table, Table | None, list[dict]]:
    """(ours beside theirs for every method we ran, their averages of other methods, the sources used)."""
    entries = pub.load_published()
    ours_methods = {r.method for r in runs}
    have_zero_shot = any(r.zero_shot is not None for r in runs)
    ran = {(r.dataset, r.backbone, r.method) for r in runs}
    ran |= {(r.dataset, r.backbone, "zero-shot") for r in runs if r.zero_shot is not None}
    notes = Notes()
    rows, flat, used_files = [], [], set()
    arms_of: dict[str, list] = {}
    for r in runs:
        arms_of.setdefault(r.method, [])
        if r.arm not in arms_of[r.method]:
            arms_of[r.method].append(r.arm)

    def ours_for(e: pub.Entry, arm) -> tuple[float | None, str]:
        """(our value, why none) for a published entry and one of our arms (None arm: zero-shot)."""
        sub = [r for r in runs if r.backbone == e.backbone]
        if not sub:
            return None, f"no {e.backbone} runs"
        if e.shift:
            vals = [
                r.evals[e.shift]
                for r in sub
                if r.dataset == e.dataset and r.arm == arm and r.shots == e.shots and e.shift in r.evals
            ]
            return (_fmean(vals), "") if vals else (None, f"no {e.shift} evaluation of such runs")
        if e.is_average:
            if e.shots == 0:
                zs, _ = zero_shot_by(sub)
                have = set(zs)
                if have != set(e.datasets):
                    return None, _coverage(have, e.datasets)
                return statistics.fmean(zs.values()), ""
            c = t1_cells.get(e.backbone, {}).get((arm, e.shots))
            if c is None or c.mean is None:
                return None, f"no {e.shots}-shot runs"
            if set(c.datasets) != set(e.datasets):
                return None, _coverage(set(c.datasets), e.datasets)
            return c.mean, ""
        if e.shots == 0:
            zs, _ = zero_shot_by(sub)
            return (zs[e.dataset], "") if e.dataset in zs else (None, f"no {e.dataset} runs")
        vals = [r.test_acc for r in sub if r.dataset == e.dataset and r.arm == arm and r.shots == e.shots]
        return (_fmean(vals), "") if vals else (None, f"no {e.shots}-shot runs")

    for e in entries:
        zero = e.method == "zero-shot" or e.shots == 0
        if not (e.method in ours_methods or (zero and e.method == "zero-shot" and have_zero_shot)):
            continue
        if not e.is_average and (e.dataset, e.backbone, "zero-shot" if zero else e.method) not in ran:
            continue  # per-dataset figures only where we ran that method on that dataset and backbone
        used_files.add(e.file)
        arms = [None] if zero else arms_of[e.method]
        for arm in arms:
            value, why = ours_for(e, arm)
            name = "zero-shot CLIP" if zero else labels[arm]
            label = name + (f" ({e.variant})" if e.variant else "")
            where = (f"average of {len(e.datasets)}" if e.is_average else e.dataset) + (
                f" → {e.shift}" if e.shift else ""
            )
            note = notes.mark(e.note) if e.note else ""
            diff = None if value is None else value - e.value
            rows.append(
                [
                    label,
                    e.table,
                    where,
                    e.backbone,
                    str(e.shots),
                    f"{e.value:.{e.decimals}f}" + note,
                    fmt(value) if value is not None else f"— ({why})",
                    "" if diff is None else f"{diff:+.2f}",
                    e.selection,
                    short_source(e),
                ]
            )
            flat.append(
                {
                    "method": e.method,
                    "variant": e.variant or "",
                    "our_config_key": arm[1] if arm else "-",
                    "table": e.table,
                    "dataset": e.dataset,
                    "datasets": ";".join(e.datasets or ()),
                    "shift": e.shift or "",
                    "backbone": e.backbone,
                    "shots": e.shots,
                    "theirs": e.value,
                    "ours": None if value is None else round(value, 4),
                    "difference": None if diff is None else round(diff, 4),
                    "why_no_ours": why,
                    "selection": e.selection,
                    "source": e.source_label(),
                    "file": e.file,
                }
            )
    beside = Table(
        "published",
        "Published numbers beside ours",
        [
            "method",
            "their table",
            "dataset",
            "backbone",
            "shots",
            "theirs",
            "ours",
            "ours − theirs",
            "their selection",
            "source",
        ],
        rows,
        notes.lines()
        + [
            "Selection tags: "
            + "; ".join(f"{k} = {v}" for k, v in pub.SELECTION_MEANING.items())
            + ". Ours: every method chooses on the few-shot val subset only (few-shot-val).",
            "Ours is shown only where it covers the same datasets, backbone and shots as theirs; otherwise the "
            "reason is given.",
        ],
        flat,
        "Every published figure of a method we ran (averages, and per-dataset figures of our datasets).",
    )
    theirs_only = ours_methods | ({"zero-shot"} if have_zero_shot else set())
    others = _other_averages(entries, theirs_only)
    if others is not None:
        used_files |= {e.file for e in entries if e.is_average and not e.shift and e.method not in theirs_only}
    srcs = pub.sources()
    return beside, others, [{"id": f, **srcs.get(f, {})} for f in sorted(used_files)]


def short_source(e: pub.Entry) -> str:
    """The source in a table cell: the file id and the table (paper) or file @ commit (repository); the
    sources section under the tables gives each file's full reference."""
    s = e.source
    return f"{e.file}: {s['table']}" if "paper" in s else f"{e.file}: {s['file']} @ {s['commit'][:7]}"


def _coverage(ours: set, theirs) -> str:
    missing = [d for d in theirs if d not in ours]
    extra = sorted(ours - set(theirs))
    bits = [f"ours covers {len(ours & set(theirs))} of their {len(theirs)} datasets"]
    if extra:
        bits.append(f"and {', '.join(extra)}, which theirs does not")
    if missing and len(missing) <= 4:
        bits.append(f"missing {', '.join(missing)}")
    return "not comparable: " + " ".join(bits)


def _other_averages(entries, ours_methods: set) -> Table | None:
    groups: dict[tuple, dict[int, pub.Entry]] = {}
    for e in entries:
        if e.is_average and not e.shift and e.method not in ours_methods:
            groups.setdefault((e.file, e.table, e.method, e.variant or "", e.backbone, e.selection), {})[e.shots] = e
    if not groups:
        return None
    shots = sorted({k for g in groups.values() for k in g})
    rows, flat = [], []
    for (file, table, method, variant, backbone, selection), g in sorted(groups.items()):
        any_e = next(iter(g.values()))
        rows.append(
            [
                method + (f" ({variant})" if variant else ""),
                backbone,
                *[f"{g[k].value:.{g[k].decimals}f}" if k in g else "" for k in shots],
                selection,
                short_source(any_e),
            ]
        )
        for k, e in g.items():
            flat.append(
                {
                    "method": method,
                    "variant": variant,
                    "table": table,
                    "backbone": backbone,
                    "shots": k,
                    "value": e.value,
                    "datasets": ";".join(e.datasets or ()),
                    "selection": selection,
                    "source": e.source_label(),
                    "file": file,
                }
            )
    return Table(
        "published_other",
        "Published averages of methods not run here",
        ["method", "backbone", *[f"{k}-shot" for k in shots], "selection", "source"],
        rows,
        [],
        flat,
        "Averages over the datasets each source names (see published.csv for the list).",
    )


# ----------------------------------------------------------------------------
# The report


@dataclass
class Report:
    runs: list[RunRecord]
    left_out: list[dict]
    tables: list[Table]
    figures: list[dict]  # {"backbone", "panels": [{"title", "series": [...]}]} (drawn by write_report)
    sources: list[dict]
    summary: dict


def build_report(run_dirs) -> Report:
    """Every table (and the data of every plot) of the runs under `run_dirs`; nothing is written."""
    runs, left_out = load_runs(run_dirs)
    labels = arm_labels(runs)
    tables, figures, t1_cells = [], [], {}
    backbones = sorted({r.backbone for r in runs})
    for b in backbones:
        sub = [r for r in runs if r.backbone == b]
        arms = {r.arm for r in sub}
        t1, cells = averaged_table(
            f"table1-{b}",
            f"Table 1 — {b}: average over datasets",
            sub,
            arms,
            labels,
            "Per method, the accuracy averaged over datasets for each shot count.",
        )
        t1_cells[b] = cells
        tables.append(t1)
        tables.append(per_dataset_table(b, sub, labels))
        figures.append(_figure(b, sub, labels, cells))
    t2 = table2(runs, labels)
    t3 = table3(runs, labels)
    tables += [t for t in (t2, t3) if t is not None]
    tables.append(table4(runs, labels))
    for b in backbones:
        sub = [r for r in runs if r.backbone == b and r.method in ABLATIONS]
        if any(r.method != "cmm" for r in sub):
            t6, _ = averaged_table(
                f"table6-{b}",
                f"Table 6 — {b}: CMM ablations",
                sub,
                {r.arm for r in sub},
                labels,
                "CMM and its ablations (no map W, no triplet loss, CMM logits only), averaged over datasets.",
                zero_shot=False,
            )
            tables.append(t6)
    beside, others, sources = published_tables(runs, t1_cells, labels)
    tables.append(beside)
    if others is not None:
        tables.append(others)
    summary = {
        "runs": len(runs),
        "left_out": len(left_out),
        "datasets": dataset_order({r.dataset for r in runs}),
        "backbones": backbones,
        "methods": [labels[a] for a in arm_order(labels)],
        "shots": sorted({r.shots for r in runs}),
        "seeds": sorted({r.seed for r in runs}),
    }
    return Report(runs, left_out, tables, figures, sources, summary)


def _figure(backbone: str, runs: list[RunRecord], labels: dict, cells: dict) -> dict:
    zs, _ = zero_shot_by(runs)
    datasets = dataset_order({r.dataset for r in runs})
    panels = []
    for d in datasets:
        series = []
        for arm in arm_order(r.arm for r in runs if r.dataset == d):
            pts = []
            for k in sorted({r.shots for r in runs if r.dataset == d and r.arm == arm}):
                vals = [r.test_acc for r in runs if r.dataset == d and r.arm == arm and r.shots == k]
                pts.append((k, _fmean(vals), _std(vals) or 0.0))
            series.append({"label": labels[arm], "points": pts})
        panels.append({"title": d, "series": series, "zero_shot": zs.get(d)})
    avg = []
    for arm in arm_order(r.arm for r in runs):
        pts = [
            (k, c.mean, c.std or 0.0)
            for (a, k), c in sorted(cells.items(), key=lambda t: str(t[0]))
            if a == arm and k > 0 and c.mean is not None and len(c.datasets) == len(datasets)
        ]
        if pts:
            avg.append({"label": labels[arm], "points": sorted(pts)})
    zs_avg = statistics.fmean(zs[d] for d in datasets) if datasets and all(d in zs for d in datasets) else None
    panels.append({"title": f"average of {len(datasets)} datasets", "series": avg, "zero_shot": zs_avg})
    return {"backbone": backbone, "panels": panels}


# ----------------------------------------------------------------------------
# Writing


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_report_target(out_dir, plot: bool = True) -> Path:
    """Refuse, before any work, an output folder that cannot be written or a plot without matplotlib."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CmmError(f"{out} exists and is not a folder.", "Pass --out (or --report) a folder for the report.")
    check_output_path(out, "--out", folder=True)  # the check every output option goes through
    if plot and not plotting_available():
        raise CmmError(
            "The report's accuracy-vs-shots plots need matplotlib, which is not installed.",
            "Install the plot extra: pip install 'cmm-cache[plot]' (or pip install matplotlib), or pass --no-plot.",
        )
    return out


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    if t.about:
        lines += [t.about, ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in t.header) + " |")
    numeric = [
        all(not c or c[0].isdigit() or c[0] in "—+-" for c in (row[i] for row in t.rows)) for i in range(len(t.header))
    ]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    if t.notes:
        lines.append("")
        lines += [_md_escape(n) + "  " for n in t.notes]
    return "\n".join(lines) + "\n"


def table_html(t: Table) -> str:
    e = html.escape
    out = [f"<h3>{e(t.title)}</h3>"]
    if t.about:
        out.append(f"<p>{e(t.about)}</p>")
    out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr></thead><tbody>")
    for row in t.rows:
        out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    if t.notes:
        out.append('<ol class="notes">' + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ol>")
    return "\n".join(out)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols or ["empty"])
        w.writeheader()
        w.writerows(rows)
    return path


def draw_figure(fig_data: dict) -> bytes:
    """PNG bytes of one backbone's accuracy-vs-shots panels (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = fig_data["panels"]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    shots = sorted({k for p in panels for s in p["series"] for k, _, _ in s["points"]})
    xs = {k: i + 1 for i, k in enumerate(shots)}  # x = 0 is zero-shot; shots evenly spaced (1, 2, 4, 8, 16)
    labels = list(dict.fromkeys(s["label"] for p in panels for s in p["series"]))
    colors = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    markers = "osD^vPX<>*"
    style = {lab: (colors[i % len(colors)], markers[i % len(markers)]) for i, lab in enumerate(labels)}
    for ax, p in zip(axes.flat, panels):
        for s in p["series"]:
            c, m = style[s["label"]]
            ax.errorbar(
                [xs[k] for k, _, _ in s["points"]],
                [v for _, v, _ in s["points"]],
                yerr=[e for _, _, e in s["points"]],
                color=c,
                marker=m,
                capsize=3,
                label=s["label"],
                markersize=4,
                linewidth=1.2,
            )
        if p["zero_shot"] is not None:
            ax.plot(
                [0],
                [p["zero_shot"]],
                marker="*",
                color="black",
                markersize=11,
                linestyle="none",
                label="zero-shot CLIP",
            )
        ax.set_xticks([0, *xs.values()], ["0", *[str(k) for k in shots]])
        ax.set_xlim(-0.5, len(shots) + 0.5)
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8, frameon=False)
    fig.suptitle(f"{fig_data['backbone']}: test accuracy vs shots (error bars: std over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(names) // 6), 1, 0.96))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child,td:nth-child(2){text-align:left}
.notes{font-size:0.8em;color:#444}img{max-width:100%}code{background:#f4f4f4;padding:1px 3px}"""


def write_report(rep: Report, out_dir, plot: bool = True, title: str = "cmm-cache benchmark report") -> dict:
    """Write report.md, report.html (self-contained: CSS and PNGs inline), one CSV per table and the PNGs."""
    out = check_report_target(out_dir, plot)
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {"csv": {}, "png": []}
    pngs: dict[str, bytes] = {}
    if plot:
        for f in rep.figures:
            name = f"accuracy_vs_shots-{_safe(f['backbone'])}.png"
            pngs[name] = draw_figure(f)
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(pngs[name])
            written["png"].append(str(out / name))
    for t in rep.tables:
        written["csv"][t.key] = str(_write_csv(out / f"{_safe(t.key)}.csv", t.csv))
    s = rep.summary
    head = [
        f"# {title}",
        "",
        f"{s['runs']} runs: {len(s['datasets'])} dataset(s) ({', '.join(s['datasets'])}), backbone(s) "
        f"{', '.join(s['backbones'])}, {len(s['methods'])} method configuration(s), shots "
        f"{', '.join(map(str, s['shots']))}, seeds {', '.join(map(str, s['seeds']))}.",
        "",
    ]
    md, body = list(head), []
    for t in rep.tables:
        md.append(table_markdown(t))
        body.append(table_html(t))
        if t.key.startswith("per_dataset-") and plot:
            b = t.key[len("per_dataset-") :]
            name = f"accuracy_vs_shots-{_safe(b)}.png"
            if name in pngs:
                md.append(f"![accuracy vs shots, {b}]({name})\n")
                data = base64.b64encode(pngs[name]).decode("ascii")
                body.append(f'<img alt="accuracy vs shots, {html.escape(b)}" src="data:image/png;base64,{data}">')
    src_md, src_html = ["### Sources of the published numbers", ""], ["<h3>Sources of the published numbers</h3><ul>"]
    for src in rep.sources:
        line = f"{src.get('title', src['id'])} — {src.get('reference', '')}" + (
            f" ({src['url']})" if src.get("url") else ""
        )
        src_md.append(f"- **{src['id']}**: {line}. {src.get('about', '')}")
        src_html.append(
            f"<li><b>{html.escape(src['id'])}</b>: {html.escape(line)}. {html.escape(src.get('about', ''))}</li>"
        )
    src_html.append("</ul>")
    md += src_md + [""]
    body += src_html
    if rep.left_out:
        md += ["### Left out", ""] + [f"- {d['path']}: {d['error']}" for d in rep.left_out] + [""]
        body.append(
            "<h3>Left out</h3><ul>"
            + "".join(f"<li>{html.escape(d['path'])}: {html.escape(d['error'])}</li>" for d in rep.left_out)
            + "</ul>"
        )
    written["markdown"] = str(write_text(out / "report.md", "\n".join(md)))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(head[2])}</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    written["html"] = str(write_text(out / "report.html", page))
    return written


def _safe(name: str) -> str:
    return "".join(c if (c.isalnum() or c in "-_.+") else "_" for c in str(name))


def report(run_dirs, out_dir, plot: bool = True, title: str = "cmm-cache benchmark report") -> dict:
    """Check the output first, build every table from the runs under `run_dirs`, write them; the paths written
    plus the report's summary."""
    check_report_target(out_dir, plot)
    rep = build_report(run_dirs)
    return {**write_report(rep, out_dir, plot, title), "summary": rep.summary, "left_out": rep.left_out}


def first_table(rep: Report, prefix: str) -> Table | None:
    """The first table whose key starts with `prefix` (``table1-``, ``published``, ...), or None."""
    return next((t for t in rep.tables if t.key.startswith(prefix)), None)
