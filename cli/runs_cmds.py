"""`cmm-cache runs ls`: the fitted runs, with the short ids `--run` takes."""

from __future__ import annotations

from pathlib import Path

import click
from cmm_cache.cli.common import cache_dir_option, console, emit_json, handle_errors, json_option, runs_dir_option
from cmm_cache.cli.tables import new_table, plain


@click.group("runs")
def runs_group():
    """Find fitted runs: `runs ls`."""


@runs_group.command("ls")
@click.option("--dataset", default=None, help="Only runs of this dataset (name, alias, or your data's short name).")
@click.option("--method", default=None, help="Only runs of this method (e.g. cmm, zero-shot).")
@click.option("--backbone", default=None, help="Only runs of this backbone (as given to `extract`).")
@runs_dir_option
@cache_dir_option
@json_option
@handle_errors
def runs_ls(dataset, method, backbone, runs_dir, cache_dir, as_json):
    """List fitted runs: run id, method, dataset, backbone, shots, seed, test accuracy, folder.

    `--run` of predict, export and eval takes the run id (or a unique prefix of it).

    \b
    cmm-cache runs ls
    cmm-cache runs ls --dataset dtd10 --method cmm
    cmm-cache predict --run 3f9c2a photos/
    """
    from cmm_cache.runs.discovery import list_runs
    from cmm_cache.util import paths

    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    runs = list_runs(root, dataset=dataset, method=method, backbone=backbone)
    if as_json:
        emit_json({"runs_root": str(root), "runs": [r.to_dict() for r in runs]})
        return
    if not runs:
        what = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("method", method), ("backbone", backbone)) if v)
        console.print(
            f"No runs{' of ' + what if what else ''} under {root}. Fit one: `cmm-cache fit --shots 4`.",
            markup=False,
            soft_wrap=True,
        )
        return
    cols = ("run id", "method", "config", "dataset", "backbone", "shots", "seed", "test acc", "path")
    t = new_table(cols, f"runs under {root}")
    for r in runs:
        t.add_row(
            r.run_id or "-",
            plain(r.method),
            plain(r.config_key or "-"),
            plain(r.dataset),
            plain(r.backbone),
            str(r.shots),
            str(r.seed),
            "-" if r.test_acc is None else f"{r.test_acc:.2f}",
            plain(r.path),
        )
    console.print(t)


COMMANDS = [runs_group]
