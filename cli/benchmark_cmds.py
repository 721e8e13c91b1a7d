"""`cmm-cache benchmark` (datasets × backbones × methods × shots × seeds, sharded) and `cmm-cache report`."""

from __future__ import annotations

from pathlib import Path

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    console,
    data_root_option,
    device_option,
    emit_json,
    handle_errors,
    int_list,
    json_option,
    runs_dir_option,
    templates_option,
)


def _print_report(written: dict) -> None:
    console.print(f"report: {written['html']}", markup=False)
    console.print(f"        {written['markdown']}", markup=False)
    for p in written.get("png", []):
        console.print(f"        {p}", markup=False)
    console.print(f"        {len(written['csv'])} CSV table(s) beside them", markup=False)
    for d in written.get("left_out", []):
        console.print(f"[yellow]left out[/] {d['path']}: {d['error']}")


@click.command("benchmark")
@click.option("--datasets", required=True, help="'paper' (the 11 datasets of the paper's Table 1) or a comma list.")
@click.option("--backbone", "backbones", required=True, help="Backbone name, or a comma list (e.g. rn50,vit-b-16).")
@click.option("--methods", default="all", show_default=True, help="'all' or a comma list, e.g. zero-shot,gda,cmm.")
@click.option("--shots", default="1,2,4,8,16", show_default=True, callback=int_list, help="Few-shot K list.")
@click.option("--seeds", default="1,2,3", show_default=True, callback=int_list, help="Seed list.")
@click.option(
    "--extract",
    "do_extract",
    is_flag=True,
    help="First extract missing caches (with block inputs when cross-modal-partial-ft is named) and add "
    "per-template text.",
)
@data_root_option
@templates_option
@click.option(
    "--max-iterations",
    default=None,
    type=click.IntRange(1),
    help="Cap every trained method's optimizer steps per training (smoke tests; recorded in each run).",
)
@click.option("--option", "method_options", multiple=True, help="A method's option: METHOD.KEY=VALUE (JSON value).")
@runs_dir_option
@cache_dir_option
@device_option
@click.option("--force", is_flag=True, help="Fit again runs already saved (default: a finished run is skipped).")
@click.option(
    "--shard",
    default=None,
    help="Run shard I of N (0-based, e.g. 0/4). Under torchrun or a SLURM job array the environment decides.",
)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1), help="Worker processes (CPU).")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the report goes once every job is finished [default: <runs-dir>/report].",
)
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--no-plot", is_flag=True, help="Write the report without its plots (no matplotlib needed).")
@json_option
@handle_errors
def benchmark_cmd(
    datasets,
    backbones,
    methods,
    shots,
    seeds,
    do_extract,
    data_root,
    templates,
    max_iterations,
    method_options,
    runs_dir,
    cache_dir,
    device,
    force,
    shard,
    jobs,
    report_dir,
    no_report,
    no_plot,
    as_json,
):
    """Every dataset × backbone × method × shots × seed as ordinary runs, then the report.

    A finished run is skipped, so running the same command again resumes a killed benchmark (--force refits).
    Every job's requirements are checked before anything trains.

    \b
    cmm-cache benchmark --datasets paper --backbone rn50 --methods all                      # one GPU or CPU
    cmm-cache benchmark --datasets dtd,eurosat --backbone rn50 --methods zero-shot,cmm --jobs 4   # CPU workers
    torchrun --nproc-per-node 4 -m cmm_cache benchmark --datasets paper --backbone rn50    # one shard per GPU
    sbatch --array=0-7 --wrap "cmm-cache benchmark --datasets paper --backbone rn50"      # one shard per task
    """

    from cmm_cache.analysis.report import check_report_target, report
    from cmm_cache.util import paths

    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    out_dir = None if no_report else Path(report_dir) if report_dir else root / "report"
    if out_dir is not None:
        check_report_target(out_dir, plot=not no_plot)  # before any work

    extract = add_text = None
    if do_extract:
        from cmm_cache.extract.add_text import add_text as run_add_text
        from cmm_cache.extract.pipeline import extract as run_extract
        from cmm_cache.runs.benchmark import PROTOCOL_SEEDS, extract_plan

        ex_shots, ex_seeds = extract_plan(shots, seeds)

        def extract(dataset, backbone, finetune_blocks=0):
            blocks = f" with the inputs of the last {finetune_blocks} block(s)" if finetune_blocks else ""
            console.print(f"extracting {dataset} × {backbone}{blocks} ...", markup=False)
            r = run_extract(
                dataset,
                backbone,
                cache_root=cache_dir,
                data_root=data_root,
                shots=ex_shots,
                seeds=ex_seeds or list(PROTOCOL_SEEDS),
                device=device,
                finetune_blocks=finetune_blocks,
            )
            console.print(f"  {r.status}: {r.path}", markup=False)

        def add_text(dataset, backbone, path):
            console.print(f"adding per-template text to {path} ...", markup=False)
            run_add_text(dataset, backbone, cache_root=cache_dir, out=path, device=device)

    from cmm_cache.cli.progress import Heartbeat
    from cmm_cache.cli.progress import sink as progress_sink

    log = progress_sink("benchmark")  # a line at least every ~10 s in a log, also while one long run trains

    def started(s):
        log.touch()
        console.print(
            f"benchmark: {s['jobs']} jobs; shard {s['shard']['index']}/{s['shard']['count']} "
            f"({s['shard']['source']}): {s['shard_jobs']} jobs, {s['already_finished']} already finished; "
            f"device {s['device']}, {s['processes']} process(es); runs under {s['runs_root']}",
            markup=False,
        )

    def progress(done, total, r, job):  # on stderr, also with --json
        log.touch()
        log.set_status(f"benchmark: {done}/{total} runs done")
        if r.get("skipped"):
            console.print(f"[{done}/{total}] {job.label()}: already finished", markup=False)
            return
        console.print(
            f"[{done}/{total}] {job.label()}: test {r['test_acc']:6.2f} %  val {r['val_acc']:6.2f} %  "
            f"{r['fit_seconds'] or 0:.2f} s",
            markup=False,
        )

    with Heartbeat(log):
        out = _run(datasets, backbones, methods, shots, seeds, method_options, max_iterations, templates, cache_dir,
                   root, device, force, shard, jobs, extract, add_text, progress, started)  # fmt: skip
    for where, methods in out["not_run"].items():  # 'all' left them out: say which and how to add them
        for m, why in methods.items():
            console.print(f"not run on {where}: {m} ({why})", markup=False)
    console.print(
        f"ran {out['ran']}, skipped {out['skipped']} (finished before); {out['finished']} of {out['jobs']} jobs "
        "of the whole benchmark are finished",
        markup=False,
    )
    if out_dir is not None and out["complete"]:
        with Heartbeat(progress_sink("report")):
            written = report(out["run_folders"], out_dir, plot=not no_plot)
        out["report"] = {k: v for k, v in written.items() if k != "summary"}
        if not as_json:
            _print_report(written)
    elif out_dir is not None:
        out["report"] = None
        console.print(
            "The report is written by the process that finishes the last job (other shards are still running), "
            f"or at any time by: cmm-cache report {root} --out {out_dir}",
            markup=False,
        )
    if as_json:
        emit_json({k: v for k, v in out.items() if k != "run_folders"})


def _run(datasets, backbones, methods, shots, seeds, method_options, max_iterations, templates, cache_dir, root,
         device, force, shard, jobs, extract, add_text, progress, started):  # fmt: skip
    from cmm_cache.cli.compare_cmds import _method_options

    from cmm_cache.runs.benchmark import benchmark

    return benchmark(
        datasets,
        backbones,
        methods,
        shots,
        seeds,
        options=_method_options(method_options),
        max_iterations=max_iterations,
        templates=templates,
        cache_dir=cache_dir,
        runs_root=root,
        device=device,
        force=force,
        shard=shard,
        jobs=jobs,
        extract=extract,
        add_text=add_text,
        progress=progress,
        before_training=started,
    )


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the report.")
@click.option("--no-plot", is_flag=True, help="Leave out the plots (no matplotlib needed).")
@click.option("--title", default="cmm-cache benchmark report", show_default=True)
@json_option
@handle_errors
def report_cmd(run_dirs, out_dir, no_plot, title, as_json):
    """The paper's tables from any run folders, with the published numbers beside ours.

    Writes report.md, report.html (one self-contained page), one CSV per table and the accuracy-vs-shots PNGs.
    RUN_DIRS are run folders or folders holding them (a runs dir, one dataset's, your own).

    \b
    cmm-cache report ~/.cache/cmm-cache/runs --out report/
    cmm-cache report runs/dtd runs/eurosat --out dtd-eurosat/ --no-plot
    """
    from cmm_cache.analysis.report import report

    written = report(run_dirs, out_dir, plot=not no_plot, title=title)
    if as_json:
        emit_json(written)
        return
    s = written["summary"]
    console.print(
        f"{s['runs']} runs: {', '.join(s['datasets'])} × {', '.join(s['backbones'])}; {len(s['methods'])} method "
        "configuration(s)",
        markup=False,
    )
    _print_report(written)


COMMANDS = [benchmark_cmd, report_cmd]
