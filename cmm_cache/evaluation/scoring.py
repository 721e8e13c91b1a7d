"""Scoring a fitted run on a cache's test split: its own cache, another cache of the same backbone and
classes, or an ImageNet shift set (only the classes the shift set holds are scored)."""

from __future__ import annotations

from pathlib import Path

import torch

from cmm_cache.backbones.identity import backbone_differences, describe_differences
from cmm_cache.cache.reader import Cache
from cmm_cache.cache.schema import content_sha256
from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import score_test, split_features
from cmm_cache.evaluation.shift import shift_classes
from cmm_cache.heads.run_folder import Run
from cmm_cache.util.atomic import write_json
from cmm_cache.util.paths import safe_name

EVAL_SCHEMA = "cmm-eval/1"
EVALS_FOLDER = "evals"  # <run folder>/evals/<dataset>.json: evaluations kept beside their run (`eval --save`)


def check_cache(run: Run, cache: Cache, *, own: bool) -> bool:
    """Whether `cache` is the one the run was fitted on. `own`: it must be (the run's recorded cache);
    otherwise another cache is accepted when it holds the same backbone's features of the same classes."""
    fitted_on = run.result.get("cache_content_sha256") or content_sha256(run.provenance)
    same_classes = list(cache.classnames) == list(run.classnames)
    here = cache.content_sha256_for(run.head.input)  # a run on features ignores the cache's block inputs
    if here == fitted_on and same_classes:  # re-extracting the same inputs keeps runs valid
        return True
    if own:
        raise CmmError(
            f"{cache.path} is not the cache run {run.path} was fitted on (its content differs: other weights, "
            "data, preprocessing, few-shot plan or code version).",
            "It was re-extracted or belongs to another backbone; fit the run again on this cache, "
            "or pass --cache to score the run on another cache of the same backbone and classes.",
        )
    check_same_backbone(run, cache)
    if not same_classes:
        raise CmmError(
            f"{cache.path} has other classes ({cache.num_classes}) than the run at {run.path} ({len(run.classnames)}).",
            "Score a cache of the same classes, or use `cmm-cache predict` on the images.",
        )
    return False


def evaluate_run(run: Run, cache: Cache, device="cpu", *, shift: bool = False, own: bool = True) -> dict:
    """Accuracies (%) of the run's head on the cache's test split (what `eval` prints)."""
    dev = torch.device(device)
    res = run.result
    classes = None
    same = False
    if shift:
        check_same_backbone(run, cache)
        classes = shift_classes(run.classnames, run.wnids, cache)
    else:
        same = check_cache(run, cache, own=own)
    if "test" not in cache.split_names:
        raise CmmError(f"{cache.path} has no test split to evaluate on.")
    x, y = split_features(cache.split("test"), None, dev)
    cls = torch.as_tensor(classes, device=dev) if classes is not None else None
    head = run.head.to(dev)
    if getattr(head, "input", "features") == "block_inputs":
        check_block_inputs(run, cache)
    acc = score_test(head, cache, x, y, run.T0.to(dev, torch.float32), dev, classes=cls)
    return {
        "run": str(run.path),
        "dataset": cache.dataset_name,  # the short name (your own data: `dtd10`, not its path)
        "run_dataset": res["dataset"],
        "backbone": res["backbone"],
        "method": res.get("method") or "cmm",
        "config_key": res.get("config_key"),
        "shots": res["shots"],
        "seed": res["seed"],
        "alpha": res.get("alpha"),
        "test_acc": acc["acc"],
        "zero_shot_test_acc": acc.get("zero_shot_acc"),
        "cmm_only_test_acc": acc.get("cmm_only_acc"),
        "num_test": int(len(y)),
        "classes_scored": int(len(classes)) if classes is not None else len(run.classnames),
        "cache": str(cache.path),
        "cache_provenance_sha256": cache.provenance_sha256,
        "fitted_on_this_cache": same,
    }


def save_evaluation(run: Run, out: dict) -> Path:
    """Keep an :func:`evaluate_run` result beside its run: ``<run>/evals/<dataset>.json`` (atomic), tagged with
    the run's id so a reader can tell it belongs to the run now in the folder (a refit replaces the folder,
    and its evaluations with it). `cmm-cache report` reads these for the shift table."""
    from cmm_cache.datasets.manifests import resolve_name

    name = resolve_name(str(out["dataset"])) or str(out["dataset"])
    doc = {"schema": EVAL_SCHEMA, "run_id": run.result.get("run_id"), "dataset_resolved": name, **out}
    return write_json(Path(run.path) / EVALS_FOLDER / (safe_name(name) + ".json"), doc)


def check_same_backbone(run: Run, cache: Cache) -> None:
    """Refuse a cache encoded by another backbone than the run's (:mod:`cmm_cache.backbones.identity`)."""
    d = run.embed_dim
    if cache.embed_dim != d:
        raise CmmError(
            f"{cache.path} holds {cache.embed_dim}-d features, the run at {run.path} expects {d}-d.",
            "Evaluate with a cache extracted with the run's backbone.",
        )
    diff = backbone_differences(run.provenance, cache.provenance)
    if diff:
        raise CmmError(
            f"{cache.path} was encoded by another backbone than the run at {run.path} "
            f"({describe_differences(diff, 'run', 'cache')}).",
            f"Extract it with the run's backbone ({run.result.get('backbone')}).",
        )


def check_block_inputs(run: Run, cache: Cache) -> None:
    """A partial-finetuning run is scored on a cache's block inputs only when they come from the same frozen
    prefix (same fingerprint) and have the run's shape; a cache without them says how to get them."""
    want = run.head.cut
    if not cache.has_blocks("test"):
        raise CmmError(
            f"The run at {run.path} fine-tuned the image tower's last blocks; {cache.path} holds no block inputs "
            "to score it on.",
            "Extract the cache with `--finetune-blocks "
            f"{want.get('blocks', 1)}`, or classify images with `cmm-cache predict` (it runs the tower itself).",
        )
    have = cache.block_cut()
    for key in ("prefix_sha256", "input_shape", "blocks"):
        if have.get(key) != want.get(key):
            raise CmmError(
                f"{cache.path} holds block inputs of another cut or prefix than the run at {run.path} "
                f"({key}: cache {have.get(key)!r} vs run {want.get(key)!r}).",
                "Score the run on a cache extracted with its backbone and --finetune-blocks, or use `predict`.",
            )
