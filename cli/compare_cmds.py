"""`cmm-cache compare` (methods × shots on one cache) and `cmm-cache bench methods`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    cache_options,
    console,
    device_option,
    emit_json,
    handle_errors,
    int_list,
    json_option,
    not_written_json,
    report_not_written,
    runs_dir_option,
    shots_seeds_options,
    templates_option,
)
from rich.markup import escape as rich_escape


def _method_options(pairs) -> dict:
    """--option METHOD.KEY=VALUE (VALUE as JSON, else a string) -> {method: {key: value}} (methods by their
    registered names: `cross_modal_lp` is `cross-modal-lp`)."""
    from cmm_cache.errors import CmmError
    from cmm_cache.runs.compare import resolve_methods

    out: dict = {}
    for p in pairs:
        head, sep, raw = p.partition("=")
        name, dot, key = head.partition(".")
        if not (sep and dot and name and key):
            raise CmmError(f"--option '{p}' is not METHOD.KEY=VALUE.", "Example: --option prolip-linear.lrs=[0.001]")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(resolve_methods([name])[0], {})[key] = value
    return out


def _cell(c: dict) -> str:
    """mean ± std over seeds; a single run has no spread to show."""
    from cmm_cache.cli.tables import fmt_mean_std

    return fmt_mean_std(c["mean"], c["std"], c.get("runs"))


def _table(out: dict):
    from cmm_cache.cli.tables import title
    from rich.table import Table

    seeds = out["seeds"]
    over = f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else "no runs"
    t = Table(title=title(f"{out['dataset']} × {out['backbone']}: test accuracy (%), {over}"))
    t.add_column("method", no_wrap=True)
    for k in out["shots"]:
        t.add_column(f"{k}-shot", justify="right", no_wrap=True)
    t.add_column("fit s/run", justify="right", no_wrap=True)
    for r in out["table"]:
        cells = []
        for k in out["shots"]:
            c = r["cells"][k]
            text = _cell(c)
            cells.append(f"[bold green]{text} *[/]" if c["best"] else text)
        secs = r["fit_seconds_mean"]
        t.add_row(r["method"], *cells, "-" if secs is None else f"{secs:.2f}")
    t.caption = "* best of the column"
    return t


@click.command("compare")
@click.option("--methods", default="all", show_default=True, help="'all' or a comma list, e.g. zero-shot,gda,cmm.")
@shots_seeds_options
@cache_options()
@templates_option
@click.option(
    "--max-iterations",
    default=None,
    type=click.IntRange(1),
    help="Cap every trained method's optimizer steps per training (smoke tests; recorded in each run).",
)
@click.option("--option", "method_options", multiple=True, help="A method's option: METHOD.KEY=VALUE (JSON value).")
@runs_dir_option
@click.option("--no-save", is_flag=True, help="Do not write run folders.")
@click.option("--force", is_flag=True, help="Fit again runs already saved (default: a saved run is kept and reused).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Accuracy vs shots, .png/.svg")
@cache_dir_option
@device_option
@json_option
@handle_errors
def compare_cmd(
    methods,
    shots,
    seeds,
    cache_file,
    dataset,
    backbone,
    templates,
    max_iterations,
    method_options,
    runs_dir,
    no_save,
    force,
    csv_path,
    plot_path,
    cache_dir,
    device,
    as_json,
):
    """Every method on the same cache, few-shot subsets and val-only selection: one table.

    \b
    cmm-cache compare --methods all --shots 1,2,4,8,16 --seeds 1,2,3 --plot acc.png
    cmm-cache compare --methods zero-shot,tip-adapter,gda,cmm --cache dtd.h5 --csv dtd.csv --json
    """
    from cmm_cache.cli.fit_cmds import open_selected_cache  # the lookup fit uses (and its checks)
    from cmm_cache.cli.progress import Bars, Heartbeat
    from cmm_cache.cli.progress import sink as progress_sink

    from cmm_cache.runs.compare import (
        PLOT_FORMATS,
        compare,
        json_table,
        plot,
        require_matplotlib,
        resolve_methods,
        write_table_csv,
    )
    from cmm_cache.runs.protocol import plan
    from cmm_cache.util import paths
    from cmm_cache.util.device import resolve_device
    from cmm_cache.util.outputs import check_output_path, try_write

    # Everything that can be refused is refused before the first fit: outputs, cache, methods, options.
    if csv_path:
        csv_path = check_output_path(csv_path, "--csv")
    if plot_path:
        plot_path = check_output_path(plot_path, "--plot", suffixes=PLOT_FORMATS)
        require_matplotlib()
    cache = open_selected_cache(cache_file, dataset, backbone, cache_dir)
    names = resolve_methods(methods)
    opts = _method_options(method_options)
    root = None if no_save else Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    log = progress_sink(f"compare on {cache.dataset_name} × {cache.backbone}")
    jobs = plan(cache, sorted(set(shots)) if shots else None, sorted(set(seeds)) if seeds else None)
    log.emit(
        f"compare on {cache.dataset_name} × {cache.backbone}: {len(names)} method(s) × {len(jobs)} few-shot "
        f"subset(s) = {len(names) * len(jobs)} runs"
    )

    def progress(done, total, r):  # on stderr, also with --json: a long compare always shows where it is
        note = "  (already fitted: kept)" if r.get("skipped") else ""
        console.print(
            f"[{done}/{total}] {r['method']:22s} {r['shots']:>2}-shot seed {r['seed']}: "
            f"test {r['test_acc']:6.2f} %  val {r['val_acc']:6.2f} %  {r['fit_seconds'] or 0:.2f} s{note}",
            markup=False,
            soft_wrap=True,
        )
        log.touch()

    with Heartbeat(log), Bars(not as_json, log) as bars:

        def step(method, k, s):
            update = bars.task(f"compare {method} {k}-shot seed {s}", None, "it")
            if update is None:
                log.set_status(f"compare {method} {k}-shot seed {s}")
                return None
            return lambda done, total, loss: update(done, total, None if loss is None else f"loss {loss:.4f}")

        out = compare(
            cache,
            methods if methods.strip() == "all" else names,  # "all": compare leaves out what the cache lacks
            shots,
            seeds,
            options=opts,
            max_iterations=max_iterations,
            runs_root=root,
            force=force,
            templates=templates,
            device=resolve_device(device),
            progress=progress,
            step=step,
        )
    # The result first: an output that cannot be written now (a full disk) loses nothing else.
    title = f"{out['dataset']} × {out['backbone']}"
    if not as_json:
        console.print(_table(out))
    failed = []
    if csv_path:
        written, fail = try_write("--csv", csv_path, lambda: write_table_csv(out["table"], csv_path))
        out["csv"], failed = (str(written) if written else None), failed + [fail]
    if plot_path:
        written, fail = try_write("--plot", plot_path, lambda: plot(out["table"], plot_path, title))
        out["plot"], failed = (str(written) if written else None), failed + [fail]
    failed = [f for f in failed if f]
    if as_json:
        emit_json({**out, "table": json_table(out["table"]), **not_written_json(failed)})
    else:
        for name, why in (out.get("not_run") or {}).items():
            console.print(f"[yellow]not run[/]: {rich_escape(name)}: {rich_escape(why)}")
        for key, what in (("csv", "table"), ("plot", "plot")):
            if out.get(key):
                console.print(f"wrote the {what}: {out[key]}", markup=False, soft_wrap=True)
        if root is not None:
            console.print(f"run folders under {root}", markup=False, soft_wrap=True)
    report_not_written(failed)


@click.command("methods")
@click.option("--methods", default=None, help="Comma list or 'all' [default: the closed-form methods].")
@click.option("--classes", default=100, show_default=True, type=click.IntRange(2))
@click.option("--dim", default=1024, show_default=True, type=click.IntRange(2))
@click.option("--shots", default=16, show_default=True, type=click.IntRange(1))
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1), help="Report the fastest of N fits.")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads [default: torch's].")
@json_option
@handle_errors
def bench_methods_cmd(methods, classes, dim, shots, repeat, threads, as_json):
    """Fit time of each method on synthetic features (default 100 classes × 1024-d, 16 shots, 2 views).

    \b
    cmm-cache bench methods                       # closed-form methods (target: < 1 s each)
    cmm-cache bench methods --methods all --repeat 1 --classes 47
    """
    from cmm_cache.bench.methods import bench_methods
    from cmm_cache.runs.compare import resolve_methods

    names = resolve_methods(methods) if methods else None
    if not as_json:
        console.print(
            f"[bold]fit seconds[/], {classes} classes × {dim}-d, {shots} shots × 2 views (fastest of {repeat})"
        )
    from cmm_cache.cli.progress import Heartbeat, printer
    from cmm_cache.cli.progress import sink as progress_sink

    sink = progress_sink("bench methods")
    with Heartbeat(sink):
        out = bench_methods(names, classes, dim, shots, repeat, threads, log=printer(sink, quiet=as_json))
    if as_json:
        emit_json(out)
    else:
        console.print(f"machine: {out['machine']}", markup=False)


@click.command("partial-ft")
@click.option(
    "--arch", default="rn50", show_default=True, help="rn50 | vit-b-16 | vit-b-32 | tiny | an open_clip model."
)
@click.option("--blocks", default=1, show_default=True, type=click.IntRange(1), help="As extract --finetune-blocks.")
@click.option("--classes", default=47, show_default=True, type=click.IntRange(2))
@click.option("--shots", default=16, show_default=True, type=click.IntRange(1))
@click.option("--iterations", default=20, show_default=True, type=click.IntRange(1), help="Steps measured.")
@click.option("--full", is_flag=True, help="Time the whole fit (9 configs × 12,800 steps) instead of estimating it.")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads [default: torch's].")
@device_option
@json_option
@handle_errors
def bench_partial_ft_cmd(arch, blocks, classes, shots, iterations, full, threads, device, as_json):
    """Fit time of cross-modal-partial-ft at a real tower's size (random weights; DTD-sized by default).

    \b
    cmm-cache bench partial-ft                        # RN50's attention pool, on the CPU: estimate from 20 steps
    cmm-cache bench partial-ft --arch vit-b-16 --device cuda --full
    """
    from cmm_cache.bench.partial_ft import bench_partial_ft
    from cmm_cache.util.device import resolve_device

    dev = resolve_device(device)
    if not as_json:
        console.print(
            f"[bold]cross-modal-partial-ft fit time[/], {arch} K = {blocks}, {classes} classes × {shots} shots"
        )
    out = bench_partial_ft(arch, blocks, classes, shots, iterations, dev, full, threads,
                           log=None if as_json else console.print)  # fmt: skip
    if as_json:
        emit_json(out)
    else:
        console.print(f"device: {out['device']}; machine: {out['machine']}", markup=False)


@click.command("compare")
@click.option("--methods", default="all", show_default=True)
@click.option("--classes", default=47, show_default=True, type=click.IntRange(2))
@click.option("--dim", default=1024, show_default=True, type=click.IntRange(2))
@click.option("--shots", default="1,2,4,8,16", show_default=True, callback=int_list)
@click.option("--seeds", default="1,2,3", show_default=True, callback=int_list)
@click.option("--max-iterations", default=None, type=click.IntRange(1), help="As compare's (default: full schedules).")
@json_option
@handle_errors
def bench_compare_cmd(methods, classes, dim, shots, seeds, max_iterations, as_json):
    """Wall time of `compare` on a synthetic cache of DTD's size (47 classes × 1024-d, 36 test images per class)."""
    from cmm_cache.cli.progress import Heartbeat, printer
    from cmm_cache.cli.progress import sink as progress_sink

    from cmm_cache.bench.methods import bench_compare

    # Progress lines go to stderr with --json too (stdout holds only the JSON object): this benchmark takes minutes.
    sink = progress_sink("bench compare")
    with Heartbeat(sink):
        out = bench_compare(methods, classes, dim, shots, seeds, max_iterations, log=printer(sink))
    if as_json:
        emit_json({k: v for k, v in out.items() if k != "table"})
        return
    console.print(f"[bold]compare: {out['runs']} runs in {out['wall_seconds']:.1f} s[/]")
    console.print(f"machine: {out['machine']}", markup=False)
    for name, secs in out["fit_seconds_per_method"].items():
        console.print(f"  {name:22s} {secs:9.2f} s of fitting")


COMMANDS = [compare_cmd]
BENCH_COMMANDS = [bench_methods_cmd, bench_compare_cmd, bench_partial_ft_cmd]
