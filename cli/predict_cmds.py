"""`cmm-cache predict`: classify image files with a fitted run."""

from __future__ import annotations

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    console,
    device_option,
    emit_json,
    handle_errors,
    json_option,
    max_image_pixels_option,
    not_written_json,
    pretrained_option,
    report_not_written,
    run_option,
    runs_dir_option,
    workers_option,
)
from cmm_cache.cli.progress import Bars, Heartbeat
from cmm_cache.cli.progress import sink as progress_sink


def _table(preds, k):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="predictions (probability %)")
    t.add_column("image", overflow="fold")
    for i in range(k):
        t.add_column(["1st", "2nd", "3rd"][i] if i < 3 else f"{i + 1}th")
    for p in preds:
        t.add_row(escape(p["path"]), *[escape(f"{c['class']} ({100 * c['prob']:.1f})") for c in p["top"]])
    return t


def _write_csv(preds, k, path):
    import csv

    from cmm_cache.util.atomic import atomic_path

    cols = ["path", "class", "prob"] + [f"{w}{i + 1}" for i in range(k) for w in ("class", "prob")]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in preds:
            w.writerow([p["path"], p["class"], p["prob"]] + [v for c in p["top"] for v in (c["class"], c["prob"])])


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@run_option()
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1), help="Classes shown per image.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write one row per image.")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and classify the others (default: stop).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Images per encoder batch.")
@workers_option()
@max_image_pixels_option
@pretrained_option()
@runs_dir_option
@cache_dir_option
@device_option
@json_option
@handle_errors
def predict_cmd(
    inputs,
    run_path,
    top_k,
    csv_path,
    skip_bad,
    batch_size,
    workers,
    max_image_pixels,
    pretrained,
    runs_dir,
    cache_dir,
    device,
    as_json,
):
    """Classify INPUTS (image files, folders searched recursively, or CSV/TSV/TXT lists of paths) with a run.

    The images go through the run's backbone and preprocessing exactly as `extract`
    encoded the cache, then the run's head: the predictions `eval` scores.

    \b
    cmm-cache predict --run RUN_DIR photo.jpg more_photos/
    cmm-cache predict --run RUN_ID list.csv --top-k 5 --json      # a run id from `cmm-cache runs ls`
    """
    from cmm_cache.serving.predict import collect_images, load_classifier
    from cmm_cache.serving.predict import top_k as topk
    from cmm_cache.util.outputs import check_output_path, try_write

    if csv_path:
        csv_path = check_output_path(csv_path, "--csv")
    paths = collect_images(inputs)
    log = progress_sink("predict: loading the run's backbone")
    with Heartbeat(log):
        clf = load_classifier(run_path, device, pretrained)
    with Heartbeat(log), Bars(not as_json, log) as bars:
        got = clf.predict_files(
            paths,
            batch_size=batch_size,
            num_workers=workers,
            skip_bad=skip_bad,
            progress=bars.task("predict", len(paths), "images"),
            max_image_pixels=max_image_pixels,
        )
    k = min(top_k, len(clf.classes))
    preds = [
        {"path": p, "class": t[0]["class"], "index": t[0]["index"], "prob": t[0]["prob"], "top": t}
        for p, t in zip(got.paths, topk(got.probs, clf.classes, k))
    ]
    from rich.markup import escape

    for s in got.skipped:
        console.print(f"[yellow]skipped[/] {escape(s['path'])}: {escape(s['error'])}")
    if not as_json:
        console.print(_table(preds, k))
    failed = None
    if csv_path:
        _, failed = try_write("--csv", csv_path, lambda: _write_csv(preds, k, csv_path))
        if not failed:
            console.print(f"wrote {len(preds)} rows to {csv_path}", markup=False, soft_wrap=True)
    if as_json:
        res = clf.run.result
        emit_json(
            {
                "run": str(clf.run.path),
                "method": res.get("method") or "cmm",
                "config_key": res.get("config_key"),
                "classes": clf.classes,
                "num_images": len(preds),
                "predictions": preds,
                "skipped": got.skipped,
                **not_written_json([failed]),
            }
        )
    report_not_written([failed])


COMMANDS = [predict_cmd]
