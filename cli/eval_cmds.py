"""`cmm-cache eval`: re-evaluate a fitted run, on its test split or on an ImageNet shift set."""

from __future__ import annotations

from pathlib import Path

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    console,
    device_option,
    emit_json,
    handle_errors,
    json_option,
    run_option,
    runs_dir_option,
)


def shift_name(shift: str) -> str:
    """A registered shift set's name; anything else is one error listing the valid names."""
    from cmm_cache.datasets import manifests
    from cmm_cache.errors import CmmError

    canon = manifests.resolve_name(shift)
    if canon is not None and manifests.get_manifest(canon)["kind"] == "shift":
        return shift
    valid = []
    for n in manifests.list_datasets():
        m = manifests.get_manifest(n)
        if m["kind"] == "shift":
            valid.append(" = ".join([n, *m.get("aliases", [])]))
    raise CmmError(
        f"'{shift}' is not an ImageNet shift set.",
        "Valid --shift names: " + "; ".join(valid) + ". (Any other cache: --cache PATH without --shift.)",
    )


def find_run_path(run_path, shift, dataset, backbone, method, shots, seed, runs_root, cache_dir) -> Path:
    """--run, else the run of --dataset/--backbone/--method/--shots/--seed under the runs root."""
    from cmm_cache.cache.locate import last_extract
    from cmm_cache.errors import CmmError
    from cmm_cache.runs.discovery import find_run

    if run_path is not None:
        return Path(run_path)
    last = last_extract(cache_dir) or {}
    dataset = dataset or ("imagenet" if shift else last.get("dataset"))
    if not dataset:
        raise CmmError("Which run? Nothing was extracted yet.", "Pass --run PATH, or --dataset and --backbone.")
    prefer = None if shift or last.get("dataset") != dataset else last.get("backbone")
    ref = find_run(
        runs_root,
        dataset,
        backbone,
        method=method,
        shots=shots or (16 if shift else None),
        seed=seed,
        prefer_backbone=prefer,
    )
    console.print(f"Run: {ref.path}", markup=False)
    return ref.path


@click.command("eval")
@run_option(required=False)
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
@click.option("--method", default="cmm", show_default=True, help="Run's method (when finding it by name).")
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
    help="Cache to evaluate on [default: the run's own cache, or <cache-dir>/<shift>/<backbone>.h5]; "
    "another cache of the run's backbone and classes is accepted.",
)
@click.option(
    "--save",
    is_flag=True,
    help="Keep the result beside the run (<run>/evals/<dataset>.json), where `cmm-cache report` finds it.",
)
@runs_dir_option
@cache_dir_option
@device_option
@json_option
@handle_errors
def eval_cmd(
    run_path, shift, dataset, backbone, method, shots, seed, cache_file, save, runs_dir, cache_dir, device, as_json
):
    """Re-evaluate a fitted run (any method) on its test split, or an ImageNet run on a shift set.

    \b
    cmm-cache eval --run RUN_DIR
    cmm-cache eval --shift imagenet-sketch          # the default-config 16-shot seed-1 ImageNet CMM run
    cmm-cache eval --shift imagenet-v2 --run RUN_DIR --save   # kept for `cmm-cache report` (its shift table)
    """
    from cmm_cache.cache.locate import find_cache
    from cmm_cache.cache.reader import open_cache
    from cmm_cache.evaluation.scoring import evaluate_run, save_evaluation
    from cmm_cache.heads.run_folder import load_run
    from cmm_cache.util import paths
    from cmm_cache.util.device import resolve_device

    if shift and not cache_file:
        shift = shift_name(shift)
    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    run = load_run(find_run_path(run_path, shift, dataset, backbone, method, shots, seed, root, cache_dir))
    res = run.result
    if shift:
        target = Path(cache_file) if cache_file else find_cache(shift, res["backbone"], cache_dir)
    else:
        target = Path(cache_file) if cache_file else Path(res.get("cache") or "")
        if not cache_file and not target.is_file():  # the recorded file moved: try the standard place
            target = find_cache(res["dataset"], res["backbone"], cache_dir)
    from cmm_cache.cli.progress import Heartbeat
    from cmm_cache.cli.progress import sink as progress_sink

    with Heartbeat(progress_sink(f"eval: scoring the test split of {target}")):
        out = evaluate_run(run, open_cache(target), resolve_device(device), shift=bool(shift), own=not cache_file)
    if save:
        out["saved"] = str(save_evaluation(run, out))
    a = "" if out["alpha"] is None else f", alpha {out['alpha']:.1f}"
    zs = "-" if out["zero_shot_test_acc"] is None else f"{out['zero_shot_test_acc']:.2f}"
    only = "" if out["cmm_only_test_acc"] is None else f", CMM logits only {out['cmm_only_test_acc']:.2f}"
    console.print(
        f"{res['dataset']} {out['method']} run ({res['shots']}-shot seed {res['seed']}{a}) on {out['dataset']}: "
        f"test {out['test_acc']:.2f} %  (zero-shot {zs}{only}; {out['classes_scored']} classes, "
        f"{out['num_test']} images)",
        markup=False,
    )
    if not shift and not out["fitted_on_this_cache"]:
        console.print(f"note: {out['cache']} is another cache than the one the run was fitted on", markup=False)
    if save:
        console.print(f"kept beside the run: {out['saved']}", markup=False)
    if as_json:
        emit_json(out)


COMMANDS = [eval_cmd]
