"""The modality gap of a cache or of fitted runs: from files to the measures of :mod:`.gap`, JSON-ready.

What ``cmm-cache gap`` computes, as a library (the command only parses, calls and prints)::

    plan = plan_gap(cache="dtd/rn50.h5")                       # the zero-shot gap of a cache
    plan = plan_gap(runs=["runs/.../shot_16-seed_1"])          # before / after of a run
    plan = plan_gap(runs=[full, no_map, no_triplet, neither])  # CMM's Fig. 10: one "before", one "after" per run
    result = compute_gap(plan, seed=0)                         # a JSON-ready dict
    gap_table(result)                                          # the table's rows (for a report)
    draw_gap_result(plan, result, "gap.png")                   # the picture

Two steps on purpose: :func:`plan_gap` opens and checks everything (runs, their cache, the split, the few-shot
rows) without touching a feature, so every mistake a user can make is reported before any work;
:func:`compute_gap` then computes.

Definitions (docs/gap.md in the source repository has them with formulas and sources)
--------------------------------------------------------------------------------------
* Features: the split's centre view, L2-normalized (:func:`cmm_cache.evaluation.metrics.split_features`).
  ``test`` and ``val``: every row of that split the cache holds; ``train``: a run's few-shot train rows of its
  (shots, seed), or every train row of the cache with ``cache=`` alone.
* **Before**: the images v̂ against the zero-shot text prototypes T0 (the run's own T0, which is the cache's
  text features of the run's template set; with ``cache=`` alone, the cache's default set).
* **After** (per run, see :func:`after_definition`): CMM family — normalize(v̂W + v̂) (v̂ without a map)
  against the run's T, normalized; a ``linear-map`` head (ProLIP's linear variant) — normalize(v̂Wᵀ) against
  T0, which is what that head scores with; other heads — not defined, with the reason.
* **Fig. 3** (per run, on the chosen split): intra-modal = nearest normalized class mean of the run's few-shot
  train images (every view, as CMM trains; with ``cache=`` alone every train row of the cache);
  inter-modal = zero-shot; cross-modal = the run's CMM logits alone (a map head: its own logits).
* **Fig. 9** (CMM family, ``test`` split only: alpha was chosen on val and the train rows were fitted): see
  :func:`cmm_cache.analysis.gap.error_flips`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.locate import find_cache
from ..cache.reader import Cache, Split, open_cache
from ..errors import CmmError
from ..evaluation.metrics import percent, split_features
from ..evaluation.scoring import check_cache
from ..heads.cmm import CMMHead
from ..heads.map import MapHead
from ..heads.run_folder import Run, load_run
from . import gap, gap_plot

SPLITS = ("test", "val", "train")
# Options that change what a run *is* (the ablations); shown in a run's label whenever they differ from its
# method's defaults. Any other option is shown only when it differs among the runs of one call.
STRUCTURAL = ("use_map", "triplet", "cmm_only", "normalize_T_in_s", "fusion", "alpha")
_NOT_LABEL = {"method", "seed", "device", "threads", "templates"}
CHUNK = 8192


# ----------------------------------------------------------------------------
# What "after" means for a run


def after_definition(run: Run) -> tuple[bool, str]:
    """(defined, what it is / why not) for the run's head."""
    head = run.head
    if isinstance(head, CMMHead):
        if head.model.W is None:
            return True, "v̂ (no map) against the run's prototypes T, normalized"
        return True, "normalize(v̂W + v̂) against the run's prototypes T, normalized"
    if isinstance(head, MapHead):
        return True, (
            "normalize(v̂Wᵀ) against the zero-shot prototypes T0 (a linear-map head: the image is mapped, "
            "the text prototypes stay T0; this is what the head scores with)"
        )
    kind = getattr(head, "kind", None) or "unknown"
    reasons = {
        "zero-shot": "a zero-shot run has no map and no prototypes of its own: its 'after' is its 'before'",
        "linear": "a linear head's weight rows (and bias) are decision directions, not image or text features in "
        "CLIP's space, and it maps no image: there is no pair of modalities to measure",
        "tip-adapter": "Tip-Adapter adds a key-value cache of train images to zero-shot; it maps no image and keeps "
        "T0, so its images and prototypes are the 'before' ones",
    }
    return False, "not defined: " + reasons.get(
        kind, f"a '{kind}' head has no map of the image features and no class prototypes of its own"
    )


def _after_features(run: Run, v: torch.Tensor, block: int = gap.DEFAULT_BLOCK):
    """(image features, prototypes) of the run's "after", on v's device; None when not defined."""
    head = run.head
    if isinstance(head, CMMHead):
        m = head.model
        W = None if m.W is None else m.W.to(v.device, torch.float32)
        return gap.cmm_map(v, W, block=block), m.T.to(v.device, torch.float32)
    if isinstance(head, MapHead):
        W = head.W.to(v.device, torch.float32)
        out = torch.empty_like(v)
        for a in range(0, v.shape[0], block):
            out[a : a + block] = v[a : a + block] @ W.t()
        return gap.normalize(out, block=block), head.T0.to(v.device, torch.float32)
    return None


# ----------------------------------------------------------------------------
# Planning: open and check everything, compute nothing


@dataclass
class RunEntry:
    run: Run
    label: str = ""


@dataclass
class GapPlan:
    """What :func:`compute_gap` will measure; every check done. Built by :func:`plan_gap`."""

    cache: Cache
    split: str
    runs: list[RunEntry]
    T0: torch.Tensor  # [C, d] the "before" prototypes
    T0_from: str
    rows: np.ndarray | None  # rows of the split measured (None: all)
    rows_from: str
    train_from: str  # where Fig. 3's intra-modal class means come from
    fitted_on_this_cache: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Dataset · backbone · method(s) · shots · seed · split: what a reader needs to place the numbers."""
        runs = [e.run.result for e in self.runs]
        shots = {r.get("shots") for r in runs}
        seeds = {r.get("seed") for r in runs}
        methods = ", ".join(dict.fromkeys(e.label for e in self.runs)) or "zero-shot CLIP (cache only)"
        return gap_plot.figure_title(
            dataset=self.cache.dataset_name,
            backbone=self.cache.backbone,
            method=methods,
            shots=shots.pop() if len(shots) == 1 else None,
            seed=seeds.pop() if len(seeds) == 1 else None,
            split=self.split,
        )


def _recorded_cache(run: Run, cache_dir) -> tuple[Path, str]:
    """The cache file a run was fitted on: the path in result.json, else the standard place in the cache dir."""
    res = run.result
    recorded = res.get("cache")
    if recorded and Path(recorded).is_file():
        return Path(recorded), "the run's own cache"
    try:
        found = find_cache(res["dataset"], res["backbone"], cache_dir)
    except (CmmError, KeyError) as e:
        where = f"not at {recorded} any more (moved or deleted)" if recorded else "not recorded in its result.json"
        detail = f" Not in the cache dir either: {e.message}" if isinstance(e, CmmError) else ""
        raise CmmError(
            f"The cache run {run.path} was fitted on is {where}.{detail}",
            "Pass --cache PATH to point at it (its content and classes are checked against the run's), "
            "or extract it again: "
            f"`cmm-cache extract --dataset {res.get('dataset')} --backbone {res.get('backbone')}`.",
        ) from None
    gone = f"result.json names {recorded}, which is gone" if recorded else "result.json names no cache file"
    return found, f"the run's cache, found in the cache dir ({gone})"


def _run_label(run: Run, others: list[Run]) -> str:
    """The method, plus the options that make this run differ (see :data:`STRUCTURAL`)."""
    from ..methods.registry import get_method

    res = run.result
    method = res.get("method") or "cmm"
    cfg = res.get("config") or {}
    try:
        defaults = get_method(method).defaults
    except CmmError:
        defaults = {}
    varying = {k for k in cfg if len({_fmt_value((o.result.get("config") or {}).get(k)) for o in others}) > 1}
    shown = []
    for k, v in cfg.items():
        if k in _NOT_LABEL or k not in defaults or v == defaults[k]:
            continue
        if k in STRUCTURAL or k in varying:
            shown.append(f"{k}={_fmt_value(v)}")
    return method + (f" ({', '.join(shown)})" if shown else "")


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def _digest(a: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float32).tobytes()).hexdigest()


def plan_gap(cache=None, runs=(), *, split: str = "test", cache_dir=None) -> GapPlan:
    """Open the runs and the cache, check they belong together and that the split is there; compute nothing.

    ``cache``: a cache file (alone: the zero-shot gap of that cache; with runs: where the runs' cache now is,
    checked like ``eval --cache``). ``runs``: run folders; several give one "before" and one "after" per run,
    so they must measure the same images against the same T0 (one cache, one template set, and for
    ``split="train"`` one few-shot subset). ``cache_dir``: where to look for a run's cache that has moved.
    """
    if split not in SPLITS:
        raise CmmError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    run_paths = list(dict.fromkeys(Path(r) for r in runs))
    if cache is None and not run_paths:
        raise CmmError("Nothing to measure.", "Give --cache FILE (the zero-shot gap) or --run RUN (before and after).")
    loaded = [load_run(p) for p in run_paths]
    fitted = {r.result.get("cache_content_sha256") or r.result.get("cache_provenance_sha256") for r in loaded}
    if len(fitted) > 1:
        raise CmmError(
            "These runs were fitted on different caches (other data, backbone or extraction), so they have no "
            "common 'before': " + ", ".join(str(r.path) for r in loaded) + ".",
            "Give runs of one cache in one call (e.g. the four ablations of one dataset, backbone and shots).",
        )
    notes: list[str] = []
    if cache is not None:
        path, own, how = Path(cache), not loaded, "given with --cache"
    else:
        path, how = _recorded_cache(loaded[0], cache_dir)
        own = True
    opened = open_cache(path)
    fitted_on = True
    for r in loaded:
        same = check_cache(r, opened, own=own)  # content hash and classes; another cache only with --cache
        if not same:
            fitted_on = False
            notes.append(f"{opened.path} is not the cache {r.path} was fitted on (same backbone and classes).")
    if split not in opened.split_names:
        raise CmmError(
            f"Cache {opened.path} has no '{split}' split.",
            f"It holds: {', '.join(opened.split_names) or 'none'}; choose one of those with --split.",
        )
    if loaded:
        digests = {_digest(r.T0) for r in loaded}
        if len(digests) > 1:
            raise CmmError(
                "These runs start from different zero-shot prototypes T0 (other template sets), so they have no "
                "common 'before'.",
                "Measure them in separate calls, or fit them with the same --templates.",
            )
        T0, T0_from = loaded[0].T0.float(), "T0 stored with the run (the cache's text features of its template set)"
        if tuple(T0.shape) != (opened.num_classes, opened.embed_dim):
            raise CmmError(
                f"The run's T0 has shape {tuple(T0.shape)}, the cache {opened.num_classes} × {opened.embed_dim}."
            )
    else:
        T0 = torch.from_numpy(opened.text()).float()
        T0_from = f"the cache's text features (template set '{opened.default_templates}', its default)"
    groups = {(int(r.result["shots"]), int(r.result["seed"])) for r in loaded}
    for k, s in sorted(groups):
        opened.fewshot(k, s)  # the few-shot rows exist (clear error otherwise)
    if "train" not in opened.split_names:
        raise CmmError(f"Cache {opened.path} has no train split (Fig. 3's intra-modal classifier needs it).")
    rows = None
    rows_from = f"every {split} row of the cache"
    train_from = "every train row of the cache (every view)"
    if loaded:
        k, s = int(loaded[0].result["shots"]), int(loaded[0].result["seed"])
        train_from = f"the run's few-shot train rows ({k} shots, seed {s}; every view)"
        if len(groups) > 1:
            train_from = "each run's few-shot train rows (every view)"
        if split == "train":
            if len(groups) > 1:
                raise CmmError(
                    "With --split train these runs measure different images (their few-shot subsets differ: "
                    + ", ".join(f"{k} shots seed {s}" for k, s in sorted(groups))
                    + ").",
                    "Use --split test or val, or give runs of one (shots, seed).",
                )
            rows = opened.fewshot(k, s)[0]
            rows_from = f"the run's few-shot train rows ({k} shots, seed {s}; centre view)"
    if split == "train":
        notes.append("Fig. 3's intra-modal classifier is scored on the images its class means come from (in-sample).")
    entries = [RunEntry(r, _run_label(r, loaded)) for r in loaded]
    if len({e.label for e in entries}) < len(entries):  # same method and options: tell them apart by shots/seed
        for e in entries:
            e.label += f" [{e.run.result.get('shots')}-shot seed {e.run.result.get('seed')}]"
    if len({e.label for e in entries}) < len(entries):
        for e in entries:
            e.label += f" [{e.run.path.name}]"
    notes.insert(0, f"cache: {opened.path} ({how})")
    return GapPlan(opened, split, entries, T0, T0_from, rows, rows_from, train_from, fitted_on, notes)


# ----------------------------------------------------------------------------
# Computing


@dataclass
class GapData:
    """The features measured (for the picture): normalized images, labels, and each set's prototypes."""

    v: torch.Tensor
    y: torch.Tensor
    T0: torch.Tensor
    after: list  # per run: (image features, prototypes) or None


def _predictions(run: Run, x: torch.Tensor, dev) -> dict[str, torch.Tensor]:
    """Class ids of the run's head, its CMM logits alone and zero-shot, chunked (no [n, C] matrix kept)."""
    head = run.head.to(dev)
    T0 = run.T0.to(dev, torch.float32)
    out: dict[str, list] = {}
    with torch.no_grad():
        for a in range(0, len(x), CHUNK):
            xb = x[a : a + CHUNK]
            parts = head.all_logits(xb)
            if "zero_shot" not in parts:
                parts["zero_shot"] = xb @ T0.t()
            for name, z in parts.items():
                out.setdefault(name, []).append(z.argmax(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _train_views(split: Split, rows: np.ndarray | None, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of the train rows as one row each (as CMM trains), with labels."""
    feats = split.features if rows is None else split.features[np.asarray(rows)]
    labels = split.labels if rows is None else split.labels[np.asarray(rows)]
    n, V, d = feats.shape
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32).reshape(n * V, d)).to(dev)
    return x, torch.from_numpy(np.repeat(np.asarray(labels, dtype=np.int64), V)).to(dev)


def compute_gap(
    plan: GapPlan,
    *,
    max_pairs: int = gap.DEFAULT_MAX_PAIRS,
    seed: int = 0,
    device="cpu",
    l2m_normalized_means: bool = False,
    block: int = gap.DEFAULT_BLOCK,
    return_data: bool = False,
):
    """The measures of a :class:`GapPlan`, JSON-ready (``return_data=True``: also the :class:`GapData`).

    {"split", "images", "rows", "cache": {...}, "before_prototypes", "sampling": {"seed", "max_pairs"},
     "before": gap_measures, "classifier_types" (only without runs), "runs": [{"run", "label", "method",
     "head", "after_defined", "after_definition", "after", "classifier_types", "error_flips",
     "error_flips_note", ...}], "notes"}
    """
    dev = torch.device(device)
    cache = plan.cache
    v, y = split_features(cache.split(plan.split), plan.rows, dev)
    T0 = plan.T0.to(dev)
    kw = {"max_pairs": max_pairs, "seed": seed, "block": block, "l2m_normalized_means": l2m_normalized_means}
    before = gap.gap_measures(v, y, T0, **kw)
    train = cache.split("train")  # Fig. 3's intra-modal class means
    out = {
        "split": plan.split,
        "images": int(len(y)),
        "rows": plan.rows_from,
        "cache": {
            "path": str(cache.path),
            "dataset": cache.dataset_name,
            "backbone": cache.backbone,
            "classes": cache.num_classes,
            "content_sha256": cache.content_sha256,
            "fitted_on_this_cache": plan.fitted_on_this_cache if plan.runs else None,
        },
        "title": plan.title,
        "before_prototypes": plan.T0_from,
        "sampling": {"seed": int(seed), "max_pairs": int(max_pairs)},
        "before": before,
    }
    after_sets = []
    if not plan.runs:
        xt, yt = _train_views(train, None, dev)
        ct = gap.classifier_types(xt, yt, v, y, T0, block=block)
        ct["intra_modal_prototypes"] = plan.train_from
        out["classifier_types"] = ct
    runs_out = []
    for entry in plan.runs:
        run = entry.run
        res = run.result
        defined, definition = after_definition(run)
        feats = _after_features(run, v, block) if defined else None
        after_sets.append(feats)
        after = gap.gap_measures(feats[0], y, feats[1], **kw) if feats is not None else None
        preds = _predictions(run, v, dev)
        k, s = int(res["shots"]), int(res["seed"])
        xt, yt = _train_views(train, cache.fewshot(k, s)[0], dev)
        ct = gap.classifier_types(xt, yt, v, y, T0, block=block)
        ct["intra_modal_prototypes"] = f"few-shot train rows ({k} shots, seed {s}; every view)"
        yc = y.cpu()
        if isinstance(run.head, CMMHead):
            ct["cross_modal"] = percent(int((preds["cmm_only"] == yc).sum()), len(yc))
            ct["cross_modal_scores"] = "the run's CMM logits alone: 100·normalize(v̂W + v̂)·Tᵀ (no fusion)"
        elif isinstance(run.head, MapHead):
            ct["cross_modal"] = percent(int((preds["head"] == yc).sum()), len(yc))
            ct["cross_modal_scores"] = "the run's own logits: 100·normalize(v̂Wᵀ)·T0ᵀ"
        else:
            ct["cross_modal_scores"] = "not defined: the run has no cross-modal scores of its own"
        ct["run_head"] = percent(int((preds["head"] == yc).sum()), len(yc))
        flips, flips_note = None, None
        if not isinstance(run.head, CMMHead):
            flips_note = "not defined: Fig. 9 compares CMM's own logits with CLIP's; this run is not a CMM run"
        elif plan.split != "test":
            flips_note = (
                "computed on test only: alpha was chosen on val and the train rows were fitted (use --split test)"
            )
        else:
            flips = gap.error_flips(yc, preds["zero_shot"], preds["cmm_only"], preds["head"])
            if run.head.alpha is None:
                flips_note = "this run has no fusion (CMM logits only): the 'fused' prediction is its CMM prediction"
        runs_out.append(
            {
                "run": str(run.path),
                "label": entry.label,
                "dataset": res.get("dataset"),
                "backbone": res.get("backbone"),
                "method": res.get("method") or "cmm",
                "config_key": res.get("config_key"),
                "shots": res.get("shots"),
                "seed": res.get("seed"),
                "alpha": res.get("alpha"),
                "head": getattr(run.head, "kind", None),
                "after_defined": defined,
                "after_definition": definition,
                "after": after,
                "classifier_types": ct,
                "error_flips": flips,
                "error_flips_note": flips_note,
            }
        )
    out["runs"] = runs_out
    out["notes"] = list(plan.notes)
    if return_data:
        return out, GapData(v, y, T0, after_sets)
    return out


# ----------------------------------------------------------------------------
# The table (the command prints it; a report can call it)


def _f(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(share) -> str:
    if share is None:
        return "-"
    return "-" if share.get("pct") is None else f"{share['pct']:.1f} % ({share['count']}/{share['of']})"


def _dist(d) -> str:
    return f"{d['mean']:.3f} [{d['p5']:.3f} {d['p50']:.3f} {d['p95']:.3f}]"


def _measure_cells(m: dict | None, l2m_norm: bool) -> list[str]:
    if m is None:
        n = 10 + (1 if l2m_norm else 0)
        return ["not defined"] * n
    r = m["rmg_parts"]
    s = m["similarities"]
    cells = [
        str(m["images"]),
        _f(m["l2m"]),
        *([_f(m.get("l2m_normalized_means"))] if l2m_norm else []),
        _f(m["prototype_gap"]["l2"]),
        _f(m["prototype_gap"]["cos"]),
        _f(m["rmg"]),
        f"{_f(r['m'])} / {_f(r['d_image'])} / {_f(r['d_text'])}",
        _dist(s["matched"]),
        _dist(s["mismatched"]),
        _dist(s["image_image"]),
        f"{s['image_image']['sample']:,} of {s['image_image']['count']:,}",
    ]
    return cells


def gap_table(result: dict) -> dict:
    """The table ``cmm-cache gap`` prints, as plain strings: {"title", "columns", "rows", "notes"}.

    ``rows`` is a list of [label, cell per column]: one column "before", then one "after: <run label>" per
    run. A report can render it as it likes (rich, Markdown, HTML).
    """
    l2m_norm = "l2m_normalized_means" in result["before"]
    labels = [
        "images",
        "L2M (centre distance)",
        *(["L2M, re-normalized class means"] if l2m_norm else []),
        "prototype gap ‖μ_c − t_c‖",
        "prototype cos(μ_c, t_c)",
        "RMG",
        "  m / d_I / d_T",
        "cos matched: mean [p5 p50 p95]",
        "cos mismatched",
        "cos image–image (other class)",
        "  image pairs for percentiles",
    ]
    runs = result["runs"]
    columns = ["measure", "before"] + [f"after: {r['label']}" for r in runs]
    cols = [_measure_cells(result["before"], l2m_norm)] + [_measure_cells(r["after"], l2m_norm) for r in runs]
    rows = [[lab, *[c[i] for c in cols]] for i, lab in enumerate(labels)]
    # Fig. 3: without runs, all of it is "before"; with runs, zero-shot (inter-modal) is "before" (the same
    # images and T0 for every run) and each run column has its own three classifiers.
    ct0 = result.get("classifier_types") or {"inter_modal": runs[0]["classifier_types"]["inter_modal"]}
    fig3 = [
        ("Fig. 3 intra-modal acc %", "intra_modal"),
        ("Fig. 3 inter-modal acc %", "inter_modal"),
        ("Fig. 3 cross-modal acc %", "cross_modal"),
    ]
    for lab, key in fig3:
        rows.append([lab, _f(ct0.get(key), 2), *[_f(r["classifier_types"].get(key), 2) for r in runs]])
    if runs:
        rows.append(["run's prediction acc %", "-", *[_f(r["classifier_types"].get("run_head"), 2) for r in runs]])
        for lab, key in (
            ("Fig. 9 inconsistent errors", "inconsistent_errors"),
            ("Fig. 9 correct flips", "correct_flips"),
            ("Fig. 9 broken", "broken"),
        ):
            rows.append([lab, "-", *[_pct(r["error_flips"][key]) if r["error_flips"] else "-" for r in runs]])
    notes = list(result.get("notes", []))
    notes.append(f"before: the images v̂ against {result['before_prototypes']}.")
    for r in runs:
        notes.append(f"after ({r['label']}): {r['after_definition']}.")
        if r.get("error_flips_note"):
            notes.append(f"Fig. 9 ({r['label']}): {r['error_flips_note']}")
    if runs:
        notes.append(
            "Fig. 3: intra-modal = nearest normalized class mean of the run's few-shot train images; inter-modal = "
            "zero-shot; cross-modal = the run's CMM logits alone. Fig. 9 (test): inconsistent = errors where "
            "zero-shot and CMM logits disagree / all errors of either; correct flips = zero-shot errors the run's "
            "prediction corrects; broken = zero-shot hits it breaks."
        )
    s = result["sampling"]
    notes.append(
        f"{result['images']:,} {result['split']} images ({result['rows']}); percentiles of image pairs from a seeded "
        f"sample of at most {s['max_pairs']:,} (seed {s['seed']}); means exact."
    )
    return {"title": result.get("title", ""), "columns": columns, "rows": rows, "notes": notes}


# ----------------------------------------------------------------------------
# The picture


def draw_gap_result(
    plan: GapPlan,
    result: dict,
    data: GapData,
    path,
    *,
    projection: str = "pca",
    num_classes: int | None = 20,
    max_per_class: int | None = 100,
    seed: int = 0,
) -> dict:
    """Draw "before" and each run's "after" (Fig. 1 / Fig. 10) with their Fig. 7 histograms into ``path``.

    Runs whose "after" is not defined are left out of the picture (the table says why). Returns what was
    drawn: {"path", "projection", "panels", "classes_drawn", "max_per_class"}.
    """
    sets = [gap_plot.GapSet("before: CLIP (v̂ vs T0)", data.v, data.y, data.T0, gap_plot.measure_note(result["before"]))]
    for r, feats in zip(result["runs"], data.after):
        if feats is not None:
            sets.append(
                gap_plot.GapSet(f"after: {r['label']}", feats[0], data.y, feats[1], gap_plot.measure_note(r["after"]))
            )
    n_present = int(torch.unique(data.y).numel())
    k = n_present if num_classes is None else min(int(num_classes), n_present)
    s = result["sampling"]
    out = gap_plot.draw_gap(
        sets,
        path,
        projection=projection,
        num_classes=k,
        max_per_class=max_per_class,
        seed=seed,
        title=result.get("title") or plan.title,
        class_names=plan.cache.classnames,
        max_pairs=s["max_pairs"],
    )
    return {
        "path": str(out),
        "projection": projection,
        "panels": [x.name for x in sets],
        "classes_drawn": k,
        "max_per_class": max_per_class,
    }


def check_plot(path, projection: str = "pca") -> Path:
    """``--plot``'s checks, before any work: see :func:`cmm_cache.analysis.gap_plot.check_plot_target`."""
    return gap_plot.check_plot_target(os.fspath(path), projection)


__all__ = [
    "GapData",
    "GapPlan",
    "SPLITS",
    "after_definition",
    "check_plot",
    "compute_gap",
    "draw_gap_result",
    "gap_table",
    "plan_gap",
]
