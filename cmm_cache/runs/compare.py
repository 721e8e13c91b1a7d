"""Methods × shots × seeds on one cache: fit every run, save it, one table of mean ± std, a plot.

    from cmm_cache.runs.compare import compare, write_table_csv, plot
    out = compare(open_cache(path), ["zero-shot", "tip-adapter", "cmm"], shots=[1, 16], seeds=[1, 2, 3])
    out["table"]   # one row per method: per shot mean ± std over seeds, the best per shot marked

Compare is the protocol (:mod:`cmm_cache.runs.protocol`) run for several methods: the same plan of
(shots, seed) subsets, one read of the cache for every run, the same val-only selection and test
evaluation (:func:`~cmm_cache.runs.protocol.fit_run`); each run is saved as an ordinary run folder in
:func:`fit_one`, the one place where compare meets the run-folder layer.

Everything that can be refused is checked before the first run trains: the methods and their options, what
each method needs from the cache (per-template text, ...), the few-shot subsets and their data, and the run
folders. Runs go subset by subset, so the methods of one (shots, seed) subset share what they compute alike
(:class:`~cmm_cache.methods.base.SharedFits`: the cross-modal grid behind cross-modal-lp and
cross-modal-wise-ft is trained once).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from pathlib import Path

from cmm_cache.cache.reader import Cache
from cmm_cache.errors import CmmError
from cmm_cache.methods.base import SharedFits
from cmm_cache.methods.registry import get_method, registered_methods
from cmm_cache.runs.protocol import (
    StepFn,
    check_data,
    check_needs,
    finished_result,
    fit_run,
    inputs_available,
    plan,
    planned_identity,
    precheck_errors,
    read_once,
    refuse_unmet,
    resolve_method,
    save_unlost,
)
from cmm_cache.runs.store import check_target, target_dir
from cmm_cache.util.atomic import atomic_path

# ----------------------------------------------------------------------------
# What to run


def _names(spec) -> list[str]:
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",")]
    return [s for s in (spec or []) if s]


def means_all(spec) -> bool:
    """Whether a methods spec asks for 'all' (or nothing): then a method the cache cannot serve is left out and
    listed, where a method named explicitly is an error before anything trains."""
    return _names(spec) in ([], ["all"])


def resolve_methods(spec) -> list[str]:
    """'all' (every registered method, registry order), a comma list or a list; unknown names: one clear error."""
    if means_all(spec):
        return registered_methods()
    spec = _names(spec)
    out = []
    for name in spec:
        out.append(get_method(name).name)  # raises CmmError listing the methods
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------
# Running


RUN_KEYS = (
    "method",
    "shots",
    "seed",
    "val_acc",
    "test_acc",
    "zero_shot_test_acc",
    "hparams",
    "fit_seconds",
    "iterations",
    "shared_fits",
    "run_id",
    "train_views",
    "warnings",
)


def fit_one(
    cache: Cache,
    method: str,
    shots: int,
    seed: int,
    options: dict,
    runs_root=None,
    templates=None,
    device="cpu",
    force: bool = False,
    shared: SharedFits | None = None,
    step: Callable[[str, int, int], StepFn | None] | None = None,
    views: str | None = None,
) -> dict:
    """Fit one run, save its folder (unless `runs_root` is None) and return its summary row.

    A run whose folder already holds the same run (same identity) is not fitted again: its stored row comes
    back with ``skipped`` True (so a killed compare resumes); `force` refits it. The one place where compare
    meets the run-folder layer. `shared`: the store the methods of this (shots, seed) subset share
    (:func:`~cmm_cache.runs.protocol.fit_run`).
    """
    if runs_root is not None:  # <runs>/<dataset>/<backbone>/<method>-<config key>/shot_K-seed_S
        m, opts = resolve_method(method, options)
        ident = planned_identity(cache, m, opts, templates, shots, seed, views)
        path = target_dir(cache, ident, runs_root)
        if check_target(path, ident, force) == "same" and not force:
            stored = finished_result(path)
            return {**{key: stored.get(key) for key in RUN_KEYS}, "run": stored["run"], "skipped": True}
    on_step = step(method, shots, seed) if step is not None else None
    result, arrays = fit_run(
        cache,
        shots,
        seed,
        method=method,
        options=options,
        templates=templates,
        device=device,
        shared=shared,
        step=on_step,
        views=views,
    )
    row = {key: result.get(key) for key in RUN_KEYS}
    if runs_root is not None:
        row["run"] = str(save_unlost(cache, result, arrays, target_dir(cache, result, runs_root), runs_root))
    return row


def compare(
    cache: Cache,
    methods,
    shots=None,
    seeds=None,
    *,
    options: dict | None = None,
    max_iterations: int | None = None,
    runs_root=None,
    templates: str | None = None,
    device="cpu",
    force: bool = False,
    progress: Callable[[int, int, dict], None] | None = None,
    step: Callable[[str, int, int], StepFn | None] | None = None,
) -> dict:
    """Fit every (method, shots, seed); returns {cache, dataset, backbone, methods, shots, seeds, table, runs}.

    `options` maps a method name to its options; `max_iterations` caps every trained method
    (:meth:`~cmm_cache.methods.base.Method.capped`); with `runs_root` each run is saved (:func:`fit_one`).
    `progress(done, total, run_summary)` is called after each run; `step(method, shots, seed)` may return a
    ``(done, total, loss)`` callback for that run's training. Runs already saved with the same identity are not
    fitted again (``skipped`` in their row), so a compare stopped midway resumes; `force` refits them. With
    'all', a method whose inputs the cache lacks (block inputs: ``extract --finetune-blocks``) is left out and
    listed in ``not_run``; named explicitly, it is one clear error before anything trains.
    """
    names = resolve_methods(methods)
    cache = read_once(cache)  # every run of every method shares one read of the file
    every = means_all(methods)
    lacking = [n for n in names if not inputs_available(cache, get_method(n))]
    if lacking and not every:
        raise CmmError(
            f"{', '.join(lacking)} fine-tune(s) the image tower's last blocks on their cached inputs, and "
            f"{cache.path} holds none.",
            cache.blocks_hint(),
        )
    not_run = {n: "the cache holds no block inputs (extract --finetune-blocks 1)" for n in lacking}
    names = [n for n in names if n not in lacking]
    jobs = plan(cache, sorted(set(shots)) if shots else None, sorted(set(seeds)) if seeds else None)
    shots, seeds = sorted({k for k, _ in jobs}), sorted({s for _, s in jobs})
    opts = {name: get_method(name).capped((options or {}).get(name), max_iterations) for name in names}
    check_before_training(cache, names, opts, jobs, templates, runs_root, force)
    total, runs = len(names) * len(jobs), []
    for k, s in jobs:  # subset by subset: the methods of one subset share what they compute alike
        shared = SharedFits()
        for name in names:
            row = fit_one(cache, name, k, s, opts[name], runs_root, templates, device, force, shared, step)
            runs.append(row)
            if progress is not None:
                progress(len(runs), total, row)
    order = {name: i for i, name in enumerate(names)}
    runs.sort(key=lambda r: (order[r["method"]], int(r["shots"]), int(r["seed"])))
    return {
        "cache": str(cache.path),
        "dataset": cache.dataset_name,  # the short name (your own data: `dtd10`, not its path)
        "backbone": cache.backbone,
        "methods": names,
        "shots": shots,
        "seeds": seeds,
        "max_iterations": max_iterations,
        "table": table(runs, names, shots),
        "runs": runs,
        "not_run": not_run,
    }


def check_before_training(cache: Cache, names, opts: dict, jobs, templates, runs_root, force: bool) -> None:
    """Refuse, before anything trains, what would stop a compare half-way: an unknown option or template set,
    what a method needs from the cache (one message listing all), a subset without data, a run folder
    holding another run."""
    methods = [resolve_method(name, opts[name])[0] for name in names]  # unknown options raise here
    if templates is not None:
        cache.text(templates)
    refuse_unmet(check_needs(cache, methods, templates))
    for k, s in jobs:
        check_data(cache, k, s)
    refused = precheck_errors(cache, [(*resolve_method(n, opts[n]), k, s) for n in names for k, s in jobs], templates)
    if refused:
        lines = "\n".join(f"  - {e.message}" for e in refused)
        hints = list(dict.fromkeys(e.hint for e in refused if e.hint))
        raise CmmError(
            f"Nothing was fitted: {len(refused)} run(s) would be refused:\n{lines}", "\n".join(hints) or None
        )
    if runs_root is not None:
        for name in names:
            m, o = resolve_method(name, opts[name])
            for k, s in jobs:
                ident = planned_identity(cache, m, o, templates, k, s)
                check_target(target_dir(cache, ident, runs_root), ident, force)


# ----------------------------------------------------------------------------
# The table


def _mean_std(vals: list[float]) -> tuple[float | None, float]:
    if not vals:
        return None, 0.0
    return round(statistics.fmean(vals), 3), round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0


def table(runs: list[dict], methods: list[str], shots: list[int]) -> list[dict]:
    """One row per method: ``cells[k] = {mean, std, runs, best, fit_seconds_mean}`` of test accuracy over seeds
    (sample std) and fit seconds per run of that shot count; ``best`` marks the highest mean of each shot column
    (ties: every one of them). ``fit_seconds_mean`` of a row is over all its runs."""
    rows = []
    for name in methods:
        mine = [r for r in runs if r["method"] == name]
        cells, secs = {}, [r["fit_seconds"] for r in mine if r.get("fit_seconds") is not None]
        for k in shots:
            accs = [float(r["test_acc"]) for r in mine if int(r["shots"]) == k]
            k_secs = [r["fit_seconds"] for r in mine if int(r["shots"]) == k and r.get("fit_seconds") is not None]
            mean, std = _mean_std(accs)
            cells[k] = {"mean": mean, "std": std, "runs": len(accs), "best": False}
            cells[k]["fit_seconds_mean"] = _mean_std(k_secs)[0]
        rows.append({"method": name, "cells": cells, "fit_seconds_mean": _mean_std(secs)[0]})
    for k in shots:
        means = [r["cells"][k]["mean"] for r in rows if r["cells"][k]["mean"] is not None]
        for r in rows:
            r["cells"][k]["best"] = bool(means) and r["cells"][k]["mean"] == max(means)
    return rows


def json_table(rows: list[dict]) -> list[dict]:
    """The table with string shot keys (JSON objects have string keys; this makes that explicit)."""
    return [{**r, "cells": {str(k): v for k, v in r["cells"].items()}} for r in rows]


def long_rows(rows: list[dict]) -> list[dict]:
    """One row per (method, shots): the CSV form of the table (fit seconds: the mean over that row's runs)."""
    out = []
    for r in rows:
        for k, c in r["cells"].items():
            out.append(
                {
                    "method": r["method"],
                    "shots": k,
                    "test_acc_mean": c["mean"],
                    "test_acc_std": c["std"],
                    "runs": c["runs"],
                    "best": c["best"],
                    "fit_seconds_mean": c.get("fit_seconds_mean"),
                }
            )
    return out


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Write through `write(temp_path)` (a sibling with the same extension), then rename: never a half file."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        write(str(tmp))
    return Path(path)


def write_table_csv(rows: list[dict], path) -> Path:
    flat = long_rows(rows)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["method", "shots"])
            w.writeheader()
            w.writerows(flat)

    return _atomic(Path(path), write)


# ----------------------------------------------------------------------------
# The plot (matplotlib: the optional [plot] extra)

PLOT_FORMATS = (".png", ".svg")


def require_matplotlib() -> None:
    """matplotlib is importable, or one clear error saying how to get it (checked before a compare starts)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CmmError(
            "Writing the plot needs matplotlib, which is not installed.",
            "Install the plot extra: pip install 'cmm-cache[plot]' (or pip install matplotlib).",
        ) from None


def plot(rows: list[dict], path, title: str = "") -> Path:
    """Test accuracy vs shots, one line per method (error bars: std over seeds), as PNG or SVG."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise CmmError(f"Cannot write a plot as '{path.suffix or path.name}'.", "Give a .png or .svg file name.")
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors, markers = plt.get_cmap("tab20").colors, "osD^vPX<>*"  # 13+ methods: no colour used twice
    for i, r in enumerate(rows):
        pts = [(k, c["mean"], c["std"]) for k, c in sorted(r["cells"].items()) if c["mean"] is not None]
        if pts:
            ks, means, stds = zip(*pts)
            style = dict(color=colors[i % len(colors)], marker=markers[i % len(markers)], capsize=3)
            ax.errorbar(ks, means, yerr=stds, label=r["method"], **style)
    shots = sorted({k for r in rows for k in r["cells"]})
    if len(shots) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    try:
        return _atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=120))
    finally:
        plt.close(fig)
