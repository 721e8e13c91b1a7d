"""`cmm-cache export`: a fitted run as one file plain PyTorch loads."""

from __future__ import annotations

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    console,
    emit_json,
    handle_errors,
    json_option,
    pretrained_option,
    run_option,
    runs_dir_option,
)
from cmm_cache.cli.progress import Heartbeat
from cmm_cache.cli.progress import sink as progress_sink


@click.command("export")
@run_option()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The file to write (e.g. model.pt2).")
@click.option("--head-only", is_flag=True, help="Raw image features [n, d] in instead of preprocessed images.")
@pretrained_option()
@runs_dir_option
@cache_dir_option
@json_option
@handle_errors
def export_cmd(run_path, out, head_only, pretrained, runs_dir, cache_dir, as_json):
    """Export a run (backbone image tower + normalization + head) with torch.export.

    Load it without cmm-cache: ``torch.export.load(FILE).module()(images)`` gives class
    probabilities; the images are preprocessed as the backbone's transform does
    (size, mean and std are stored in the file, see README).

    \b
    cmm-cache export --run RUN_DIR --out dtd.pt2
    cmm-cache export --run RUN_ID --out dtd-head.pt2 --head-only     # a run id from `cmm-cache runs ls`
    """
    from rich.markup import escape

    from cmm_cache.errors import CmmError
    from cmm_cache.serving.export import export_run
    from cmm_cache.util.outputs import check_output_path

    out = check_output_path(out, "--out")
    log = progress_sink(f"export {out}")
    with Heartbeat(log):
        try:
            meta = export_run(run_path, out, head_only=head_only, pretrained=pretrained)
        except OSError as e:  # the disk filled up, the folder went away: after the work, still no traceback
            raise CmmError(f"export: not written: --out {out} ({type(e).__name__}: {e.strerror or e}).") from None
    console.print(
        f"[green]wrote[/] {escape(meta['path'])} ({meta['bytes'] / 1e6:.1f} MB): {escape(meta['input'])} -> "
        f"{escape(meta['output'])}, {len(meta['classes'])} classes"
    )
    if as_json:
        emit_json(meta)


COMMANDS = [export_cmd]
