"""`cmm-cache eval`: re-evaluate a fitted run, on its test split or on an ImageNet shift set."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    cache_dir_option,
    console,
    device_option,
    emit_json,
    handle_errors,
    json_option,
)


@click.command("eval")
@click.option("--run", "run_path", type=click.Path(file_okay=False), default=None, help="Run folder written by `fit`.")
@click.option(
    "--shift",
    default=None,
    help="Shift set to evaluate an ImageNet run on: imagenet-sketch | imagenet-v2 | imagenet-a | imagenet-r.",
)
@click.option(
    "--dataset", default=None, help="Run's dataset [default: imagenet with --shift, else the cache extracted last]."
)
@click.option(
    "--backbone",
    default=None,
    help="Run's backbone [default: the only one fitted for that dataset, else the last extract's].",
)
@click.option(
    "--shots",
    default=None,
    type=click.IntRange(1),
    help="Run's K [default: 16 with --shift, else the largest K fitted with --seed].",
)
@click.option("--seed", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--cache",
    "cache_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Cache to evaluate on [default: the run's own cache, or <cache-dir>/<shift>/<backbone>.h5].",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Root of run folders [default: <cache-dir>/runs].",
)
@cache_dir_option
@device_option
@json_option
@handle_errors
def eval_cmd(run_path, shift, dataset, backbone, shots, seed, cache_file, runs_dir, cache_dir, device, as_json):
    """Re-evaluate a fitted run on its test split, or an ImageNet run on a shift set.

    \b
    cmm-cache eval --run RUN_DIR
    cmm-cache eval --shift imagenet-sketch          # the 16-shot seed-1 ImageNet run
    """
    from cmm_cache import paths
    from cmm_cache.cache import open_cache
    from cmm_cache.errors import CmmError
    from cmm_cache.evaluate import evaluate, shift_classes, split_features
    from cmm_cache.results import check_same_backbone, default_run_dir, load_run, resolve_device

    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    if run_path is None:
        last = paths.last_extract(cache_dir) or {}
        dataset = dataset or ("imagenet" if shift else last.get("dataset"))
        if not dataset:
            raise CmmError("Which run? Nothing was extracted yet.", "Pass --run PATH, or --dataset and --backbone.")
        if backbone is None:
            fitted = sorted(p.name for p in (root / paths.dataset_key(dataset)).glob("*") if p.is_dir())
            if len(fitted) == 1:
                backbone = fitted[0]
            elif not shift and last.get("dataset") == dataset:
                backbone = last.get("backbone")
            else:
                k = shots or 16
                if not fitted:
                    raise CmmError(
                        f"No fitted run for {dataset} under {root}.",
                        f"Fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME --shots {k}`, or "
                        "pass --run PATH.",
                    )
                raise CmmError(
                    f"Which backbone? Runs for {dataset} exist for: {', '.join(fitted)}.",
                    f"Pass --backbone NAME, or fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME "
                    f"--shots {k}`.",
                )
        if shots is None and shift:
            shots = 16
        elif shots is None:
            import re

            folder = default_run_dir(root, dataset, backbone, 1, seed).parent
            ks = [
                int(m.group(1))
                for p in folder.glob(f"shot_*-seed_{seed}")
                if (m := re.match(rf"shot_(\d+)-seed_{seed}$", p.name))
            ]
            shots = max(ks) if ks else 16
        run_path = default_run_dir(root, dataset, backbone, shots, seed)
    run = load_run(run_path)
    res = run.result
    dev = resolve_device(device)
    model = run.model.to(dev)
    classes = None
    if shift:
        target = Path(cache_file) if cache_file else paths.cache_path(shift, res["backbone"], cache_dir)
        cache = open_cache(target)
        check_same_backbone(run, cache)
        classes = shift_classes(run.classnames, run.wnids, cache)
    else:
        target = Path(cache_file) if cache_file else Path(res.get("cache") or "")
        if not cache_file and not target.is_file():  # the recorded file moved: try the standard place
            target = paths.cache_path(res["dataset"], res["backbone"], cache_dir)
        cache = open_cache(target)
        if cache.provenance_sha256 != res.get("cache_provenance_sha256"):
            raise CmmError(
                f"{cache.path} is not the cache run {run.path} was fitted on (provenance hash differs).",
                "It was re-extracted or belongs to another backbone; fit the run again on this cache.",
            )
    if "test" not in cache.split_names:
        raise CmmError(f"{cache.path} has no test split to evaluate on.")
    x, y = split_features(cache.split("test"), None, dev)
    import torch

    cls = torch.as_tensor(classes, device=dev) if classes is not None else None
    acc = evaluate(model, x, y, res.get("alpha"), classes=cls)
    out = {
        "run": str(run.path),
        "dataset": cache.dataset,
        "run_dataset": res["dataset"],
        "backbone": res["backbone"],
        "shots": res["shots"],
        "seed": res["seed"],
        "alpha": res.get("alpha"),
        "test_acc": acc["acc"],
        "zero_shot_test_acc": acc["zero_shot_acc"],
        "cmm_only_test_acc": acc["cmm_only_acc"],
        "num_test": int(len(y)),
        "classes_scored": int(len(classes)) if classes is not None else len(run.classnames),
        "cache": str(cache.path),
        "cache_provenance_sha256": cache.provenance_sha256,
    }
    a = "-" if out["alpha"] is None else f"{out['alpha']:.1f}"
    console.print(
        f"{res['dataset']} run ({res['shots']}-shot seed {res['seed']}, alpha {a}) on {cache.dataset}: "
        f"test {out['test_acc']:.2f} %  (zero-shot {out['zero_shot_test_acc']:.2f}, "
        f"CMM logits only {out['cmm_only_test_acc']:.2f}; {out['classes_scored']} classes, {out['num_test']} "
        "images)"
    )
    if as_json:
        emit_json(out)


COMMANDS = [eval_cmd]
