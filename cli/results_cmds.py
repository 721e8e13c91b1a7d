"""`cmm-cache results merge`: one table (and CSV) from many run folders."""

from __future__ import annotations

import click
from cmm_cache.cli.common import console, emit_json, handle_errors, json_option, report_not_written
from cmm_cache.cli.tables import runs_table, summary_table
from rich.markup import escape


@click.group("results")
def results_group():
    """Collect run folders into one table / CSV."""


@results_group.command("merge")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write one row per run here.")
@json_option
@handle_errors
def results_merge(run_dirs, csv_path, as_json):
    """Merge result.json of RUN_DIRS (run folders, or folders holding them) into one table.

    Runs are averaged per configuration (method and config key) and K, never
    across configurations; a damaged result.json is reported and left out.

    \b
    cmm-cache results merge ~/.cache/cmm-cache/runs/dtd --csv dtd.csv
    """

    from cmm_cache.runs.results import scan_results, summarize, write_csv
    from cmm_cache.util.outputs import check_output_path, try_write

    if csv_path:
        csv_path = check_output_path(csv_path, "--csv")
    results, damaged = scan_results(run_dirs)
    for d in damaged:
        console.print(f"[yellow]skipped[/] {escape(d['path'])}: damaged result.json ({escape(d['error'])})")
    summary = summarize(results)
    console.print(runs_table(results))
    console.print(summary_table(summary, "test accuracy (%), mean ± std over seeds, per configuration"))
    failed = None
    if csv_path:
        _, failed = try_write("--csv", csv_path, lambda: write_csv(results, csv_path))
        if not failed:
            console.print(f"wrote {len(results)} rows to {csv_path}", markup=False, soft_wrap=True)
    if as_json:
        not_written = [failed.to_dict()] if failed else []
        emit_json({"runs": results, "summary": summary, "damaged": damaged, "not_written": not_written})
    report_not_written([failed])


COMMANDS = [results_group]
