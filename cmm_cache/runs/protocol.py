"""Fitting on one cache: one (shots, seed) run, or the whole protocol (every K × seed) as a library loop.

    from cmm_cache.cache.reader import open_cache
    from cmm_cache.runs.protocol import fit_protocol

    cache = open_cache(path)
    for r in fit_protocol(cache, shots=[1, 2, 4, 8, 16], seeds=[1, 2, 3], method="cmm", options={"iterations": 2000}):
        print(r["shots"], r["seed"], r["test_acc"], r["run"])

Everything that can be refused is checked before the first run trains: the
method and its options, the template set, the few-shot groups, the data (a
class without a training image, a single class) and the run folders (another
configuration in `out`). Each cache split is read from disk once per
protocol, not once per run. A run's test split is scored only after the
method chose everything on the few-shot val subset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from cmm_cache.cache.reader import Cache, Split
from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import score_test, split_features
from cmm_cache.heads.run_folder import FINISHED_REQUIRED, read_result
from cmm_cache.methods.base import (
    Method,
    SharedFits,
    ViewChoice,
    block_inputs_lacking,
    fit_data,
    resolve_views,
    unmet_needs,
)
from cmm_cache.methods.registry import get_method
from cmm_cache.runs.identity import config_key, run_id, run_identity, typed_options
from cmm_cache.runs.store import check_target, save_run, target_dir
from cmm_cache.util.atomic import WriteFailed
from cmm_cache.util.device import resolve_device
from cmm_cache.util.versions import versions

StepFn = Callable[[int, int, "float | None"], None]  # (done, total, loss or None) of one run's training


# ----------------------------------------------------------------------------
# A cache whose splits are read once


@dataclass
class ReadOnceCache(Cache):
    """A :class:`Cache` that keeps each split (and the test features per device) after the first read,
    so the runs of one protocol share one read of the file."""

    _splits: dict = field(default_factory=dict, repr=False)
    _test: dict = field(default_factory=dict, repr=False)

    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = super().split(name)
        return self._splits[name]

    def test_features(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._test:
            self._test[key] = split_features(self.split("test"), None, device)
        return self._test[key]


def read_once(cache: Cache) -> ReadOnceCache:
    if isinstance(cache, ReadOnceCache):
        return cache
    return ReadOnceCache(**{f.name: getattr(cache, f.name) for f in fields(Cache)})


# ----------------------------------------------------------------------------
# Checks before training


def plan(cache: Cache, shots=None, seeds=None) -> list[tuple[int, int]]:
    """The (shots, seed) runs of a protocol: every K the cache holds (or `shots`, in that order) × every seed
    it holds for that K (or `seeds`). Subsets the cache lacks are one clear error that lists them all."""
    groups = cache.fewshot_groups
    if not groups:
        raise CmmError(f"{cache.path} holds no few-shot subsets.", "Re-extract it with --shots/--seeds.")
    todo, missing = [], []
    for k in list(dict.fromkeys(shots or sorted({k for k, _ in groups}))):
        have = sorted(s for kk, s in groups if kk == k)
        for s in list(dict.fromkeys(seeds or have or [1])):
            (todo if (k, s) in groups else missing).append((int(k), int(s)))
    if missing:
        held = ", ".join(f"{a}-shot/seed {b}" for a, b in sorted(groups))
        raise CmmError(
            f"{cache.path} has no few-shot subset for " + ", ".join(f"{k}-shot/seed {s}" for k, s in missing) + ".",
            f"It holds: {held}. Pick --shots/--seeds among those, or re-run `cmm-cache extract` with --shots/--seeds "
            "covering them.",
        )
    return todo


def subset_counts(cache: Cache, shots: int, seed: int) -> tuple[list[int], list[int]]:
    """Images per class in the (shots, seed) train and val subsets."""
    tr, va = cache.fewshot(shots, seed)
    C = cache.num_classes
    count = lambda split, rows: np.bincount(cache.split(split).labels[rows], minlength=C)[:C]  # noqa: E731
    return count("train", tr).astype(int).tolist(), count("val", va).astype(int).tolist()


def check_data(cache: Cache, shots: int, seed: int) -> tuple[list[int], list[int], list[str]]:
    """Per-class (train, val) counts of a subset and warnings; a dataset with one class, or a class
    with no training image, stops here.

    A class with no training image is refused rather than warned about: the run
    would still produce numbers, but they would not be the K-shot result they
    claim to be (that class is then learned from its text alone), and nothing in a
    results table would show it. It happens when `extract --skip-bad` left out
    every train image of a class in a small subset.
    """
    names = cache.classnames
    if cache.num_classes < 2:
        raise CmmError(
            f"{cache.path} holds {cache.num_classes} class ({', '.join(names) or 'none'}): nothing to classify.",
            "A classifier needs at least two classes; add a folder (class) of images and extract again.",
        )
    train, val = subset_counts(cache, shots, seed)
    empty = [names[c] for c, n in enumerate(train) if n == 0]
    if empty:
        skipped = len(cache.provenance.get("skipped") or [])
        raise CmmError(
            f"The {shots}-shot seed {seed} subset of {cache.path} has no training image for "
            f"{len(empty)} class(es): {', '.join(repr(n) for n in empty[:10])}"
            + (f" (the extraction skipped {skipped} unreadable image(s))." if skipped else "."),
            "Add readable images for those classes (or remove them from the dataset) and extract again "
            "with --force, or fit other --shots/--seeds.",
        )
    warnings = [
        f"class {names[c]!r} has no image in the val subset: hyper-parameters were chosen without it"
        for c, n in enumerate(val)
        if n == 0
    ]
    return train, val, warnings


# ----------------------------------------------------------------------------
# One run


def choose_views(cache: Cache, m: Method, views: str | None = None) -> ViewChoice:
    """The train views `m` uses on `cache`: `views` (a spec, see :mod:`cmm_cache.methods.base`) or its own."""
    if "train" not in cache.split_names:
        return ViewChoice([])
    return resolve_views(views or m.views, cache.views("train"), m.name)


def view_config(choice: ViewChoice, views: str | None) -> dict:
    """What the views add to a run's config: nothing for the centre and mirror a method uses by default (runs
    of earlier versions keep their identity), the names when augmented views (or the user's choice) are used."""
    return {"train_views": list(choice.names)} if (choice.augmented or views is not None) else {}


def inputs_available(cache: Cache, m: Method) -> bool:
    """Whether `cache` holds what `m` trains on (block inputs for the methods that fine-tune the tower's last
    blocks; features for every other)."""
    return m.inputs != "block_inputs" or block_inputs_lacking(cache) is None


def check_inputs(cache: Cache, m: Method) -> None:
    """A method that trains on block inputs needs a cache extracted with them: one clear error before training."""
    if not inputs_available(cache, m):
        raise CmmError(
            f"Method '{m.name}' fine-tunes the image tower's last blocks on their cached inputs, and {cache.path} "
            "holds none.",
            cache.blocks_hint() if hasattr(cache, "blocks_hint") else "Re-extract with --finetune-blocks 1.",
        )


def resolve_method(method: str, options: dict | None) -> tuple[Method, dict]:
    """The method and its resolved options (defaults overlaid; an unknown option is one clear error)."""
    m = get_method(method)
    return m, m.resolve(typed_options(options or {}, m.defaults))


def fit_run(
    cache: Cache,
    shots: int,
    seed: int,
    *,
    templates: str | None = None,
    progress: Callable[[int, float | None], None] | None = None,
    method: str = "cmm",
    options: dict | None = None,
    device: str | torch.device | None = None,
    shared: SharedFits | None = None,
    step: StepFn | None = None,
    views: str | None = None,
) -> tuple[dict, dict]:
    """Fit `method` on the (shots, seed) subset of `cache`, select its hyper-parameters
    on the val subset, evaluate on test. Returns (result dict, arrays for weights.npz).
    `views`: the train views to use instead of the method's own (a spec, :mod:`cmm_cache.methods.base`).

    `options` are the method's (see :mod:`cmm_cache.methods`; CMM's are the fields of its
    ``TrainConfig`` plus ``alpha`` and ``threads``). `progress(done, loss)` follows a trained method's iterations;
    `step(done, total, loss)` does the same with the total.
    `shared`: the store of results the methods of this one subset share (:class:`~cmm_cache.methods.base.SharedFits`;
    give the same store to every method fitted on this (cache, shots, seed, templates, device), and only to those).
    """
    m, opts = resolve_method(method, options)
    if step is None and progress is not None:
        step = lambda done, total, loss: progress(done, loss)  # noqa: E731
    dev = torch.device(device or "cpu")
    return _fit_one(read_once(cache), shots, seed, m, opts, templates, dev, step, shared=shared, views=views)


def check_needs(cache: Cache, methods: list[Method], templates: str | None = None) -> list:
    """What `cache` lacks for `methods` (:func:`~cmm_cache.methods.base.unmet_needs` of each), in method order."""
    return [u for m in methods for u in unmet_needs(m, cache, templates)]


def precheck_errors(cache: Cache, runs, templates: str | None = None) -> list[CmmError]:
    """What the methods themselves refuse before training (:attr:`~cmm_cache.methods.base.Method.precheck`) for
    `runs` = [(method, resolved options, shots, seed), ...]: one error per refused run, each naming it."""
    out, datas = [], {}
    for m, opts, k, s in runs:
        if m.precheck is None:
            continue
        if (k, s) not in datas:
            datas[k, s] = fit_data(cache, k, s, templates, "cpu")
        try:
            m.precheck(datas[k, s], opts)
        except CmmError as e:
            out.append(CmmError(f"{m.name} on the {k}-shot seed {s} subset of {cache.path}: {e.message}", e.hint))
    return out


def refuse_unmet(unmet: list) -> None:
    """One error listing every unmet need and the commands that add them (nothing when all are met)."""
    if not unmet:
        return
    lines = "\n".join(f"  - {u.message}" for u in unmet)
    commands = list(dict.fromkeys(u.command for u in unmet if u.command))
    raise CmmError(
        f"Nothing was fitted: {len(unmet)} requirement(s) not met:\n{lines}",
        ("Add them with:\n" + "\n".join(f"  {c}" for c in commands)) if commands else None,
    )


def _fit_one(
    cache: ReadOnceCache, shots, seed, m, opts: dict, templates, dev, step: StepFn | None, *, shared=None, views=None
):
    check_inputs(cache, m)
    train_counts, val_counts, warnings = check_data(cache, shots, seed)
    choice = choose_views(cache, m, views)
    data = fit_data(cache, shots, seed, templates, dev, shared, choice.names)
    if shared is not None:
        shared.take_log()  # what earlier methods used is theirs
    fitted = m.fit(data, opts, progress=step)
    head = fitted.head
    used = shared.take_log() if shared is not None else []

    # Test is read only now, after everything was chosen on val.
    x_te, y_te = cache.test_features(dev)
    acc = score_test(head, cache, x_te, y_te, data.T0, dev)
    hparams = dict(fitted.hparams)
    config = {"method": m.name, **opts, "seed": int(seed), "device": str(dev)}
    config["templates"] = templates or cache.default_templates
    config.update(view_config(choice, views))
    result = {
        "dataset": cache.dataset_name,  # the short name: what tables show and --dataset accepts later
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
        "config": config,
        "config_key": config_key(config, m.runtime_options),
        "head": {"kind": head.kind, "params": head.state()[1]},
        "cache_provenance_sha256": cache.provenance_sha256,
        "cache_content_sha256": cache.content_sha256_for(m.inputs),
        "versions": versions(),
        "cache": str(Path(cache.path).resolve()),
        "num_classes": cache.num_classes,
        "num_train_samples": int(len(data.x_train)),
        "train_images_per_class": train_counts,
        "val_images_per_class": val_counts,
        "train_views": list(choice.names),
        "warnings": warnings + choice.warnings + list(fitted.extra.get("warnings", [])),
        **{k: v for k, v in fitted.extra.items() if k not in ("head", "warnings")},
    }
    if used:  # results this fit shared with another method of the subset (reused: computed by that one)
        result["shared_fits"] = used
    result["run_id"] = run_id(run_identity(result))
    arrays = dict(head.state()[0])
    arrays.setdefault("T0", data.T0.cpu().numpy())  # every run keeps the zero-shot classifier
    return result, arrays


def planned_identity(
    cache: Cache, m: Method, opts: dict, templates: str | None, shots: int, seed: int, views: str | None = None
) -> dict:
    """The identity the run of `m` with `opts` on the (shots, seed) subset of `cache` will have: known
    before it is fitted, so a finished run can be found (and skipped) without fitting anything."""
    config = {"method": m.name, **opts, "templates": templates or cache.default_templates}
    config.update(view_config(choose_views(cache, m, views), views))
    return run_identity(
        {
            "dataset": cache.dataset_name,
            "backbone": cache.backbone,
            "cache_content_sha256": cache.content_sha256_for(m.inputs),
            "method": m.name,
            "config_key": config_key(config, m.runtime_options),
            "shots": shots,
            "seed": seed,
        }
    )


def save_unlost(cache: Cache, result: dict, arrays: dict, where, runs_root=None, out=None, several=False) -> Path:
    """:func:`cmm_cache.runs.store.save_run` after the fit; a folder that cannot be written now (a full disk, a
    folder removed meanwhile) is one CmmError that still gives the run's result and names the folder."""
    try:
        return save_run(cache, result, arrays, runs_root, out, force=True, several=several)
    except (OSError, WriteFailed) as e:
        acc = result.get("test_acc")
        why = e.message if isinstance(e, WriteFailed) else f"{type(e).__name__}: {e.strerror or e}"
        raise CmmError(
            f"The {result['method']} {result['shots']}-shot seed {result['seed']} run was fitted (test "
            f"{'-' if acc is None else f'{acc:.2f}'} %, val {result.get('val_acc')}) but not written: {where} "
            f"({why}).",
            "Make room or fix the folder and run the same command again: runs already written are kept.",
        ) from None


def finished_result(path: Path) -> dict:
    """The stored result of a finished run folder (for a run that is skipped), with ``run`` and ``skipped``."""
    result = read_result(path, FINISHED_REQUIRED)
    return {**result, "run": str(path), "skipped": True}


# ----------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class FitJob:
    """One independent run of a protocol (what a parallel runner would ship to a worker)."""

    shots: int
    seed: int


Runner = Callable[[Callable[[FitJob], tuple[dict, dict]], list[FitJob]], Iterable[tuple[dict, dict]]]


def _sequential(fn, jobs):
    return map(fn, jobs)


def fit_protocol(
    cache: Cache,
    shots=None,
    seeds=None,
    *,
    method: str = "cmm",
    options: dict | None = None,
    templates: str | None = None,
    device: str | torch.device | None = "cpu",
    runs_root=None,
    out=None,
    save: bool = True,
    force: bool = False,
    progress: Callable[[int, int], StepFn | None] | None = None,
    runner: Runner | None = None,
    views: str | None = None,
) -> Iterator[dict]:
    """Fit `method` on every (shots, seed) of the protocol and yield each run's result, in order.

    `shots`/`seeds` default to every K and seed the cache holds. Each result is
    saved in its run folder (:func:`cmm_cache.runs.store.save_run`; `runs_root`
    defaults to ``<cache-dir>/runs``, `out` is an exact folder for one run or
    the folder receiving ``shot_K-seed_S`` folders) unless `save` is False; the
    yielded dict adds ``run`` (the folder) and ``replaced`` (another run was there
    and `force` replaced it). A run whose folder already holds the same run (same
    identity, :mod:`cmm_cache.runs.identity`) is not fitted again: its stored result
    is yielded with ``skipped`` True, so running a killed protocol again resumes it;
    `force` refits it. `progress(shots, seed)` may return a
    ``(done, total, loss)`` callback for that run's training. `runner(fn, jobs)`
    maps the fit of each :class:`FitJob` (default: one after the other, in this
    process) — the place for a parallel runner; it must yield in job order. `views` overrides the method's
    own train views (a spec: ``center,hflip``, ``rrc:10``, ...; see :mod:`cmm_cache.methods.base`).
    """
    cache = read_once(cache)
    m, opts = resolve_method(method, options)
    check_inputs(cache, m)
    dev = torch.device(resolve_device(str(device) if device is not None else "cpu"))
    if templates is not None:
        cache.text(templates)  # refuse an unknown set before training anything
    refuse_unmet(check_needs(cache, [m], templates))
    jobs = [FitJob(k, s) for k, s in plan(cache, shots, seeds)]
    for j in jobs:
        check_data(cache, j.shots, j.seed)
    refused = precheck_errors(cache, [(m, opts, j.shots, j.seed) for j in jobs], templates)
    if refused:
        raise refused[0]
    several = len(jobs) > 1
    found, where = {}, {}
    if save:  # every folder is checked before anything trains
        for j in jobs:
            ident = planned_identity(cache, m, opts, templates, j.shots, j.seed, views)
            where[j] = target_dir(cache, ident, runs_root, out, several)
            found[j] = check_target(where[j], ident, force)
    todo = [j for j in jobs if force or found.get(j) != "same"]

    def fit_job(job: FitJob) -> tuple[dict, dict]:
        step = progress(job.shots, job.seed) if progress else None
        return _fit_one(cache, job.shots, job.seed, m, opts, templates, dev, step, views=views)

    fitted = iter((runner or _sequential)(fit_job, todo))
    for job in jobs:
        if job not in todo:
            yield finished_result(where[job])
            continue
        result, arrays = next(fitted)
        if save:
            try:
                result["run"] = str(save_unlost(cache, result, arrays, where[job], runs_root, out, several))
            except CmmError as e:  # disk full, permission: the result is still shown, then the error
                result.update(run=None, save_error=e.message)
                yield result
                raise
            result["replaced"] = found[job] != "absent"
        yield result
