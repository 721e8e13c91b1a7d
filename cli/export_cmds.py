"""`cmm-cache export`: a fitted run as one file plain PyTorch loads."""

from __future__ import annotations

import click
from cmm_cache.cli.common import console, emit_json, handle_errors, json_option, pretrained_option, run_option


@click.command("export")
@run_option()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The file to write (e.g. model.pt2).")
@click.option("--head-only", is_flag=True, help="Raw image features [n, d] in instead of preprocessed images.")
@pretrained_option()
@json_option
@handle_errors
def export_cmd(run_path, out, head_only, pretrained, as_json):
    """Export a run (backbone image tower + normalization + head) with torch.export.

    Load it without cmm-cache: ``torch.export.load(FILE).module()(images)`` gives class
    probabilities; the images are preprocessed as the backbone's transform does
    (size, mean and std are stored in the file, see README).

    \b
    cmm-cache export --run RUN_DIR --out dtd.pt2
    cmm-cache export --run RUN_DIR --out dtd-head.pt2 --head-only
    """
    from rich.markup import escape

    from cmm_cache.serving.export import export_run

    meta = export_run(run_path, out, head_only=head_only, pretrained=pretrained)
    console.print(
        f"[green]wrote[/] {escape(meta['path'])} ({meta['bytes'] / 1e6:.1f} MB): {escape(meta['input'])} -> "
        f"{escape(meta['output'])}, {len(meta['classes'])} classes"
    )
    if as_json:
        emit_json(meta)


COMMANDS = [export_cmd]
