"""`cmm-cache extract`: stage one, encode a dataset once into its feature cache."""

from __future__ import annotations

import os

import click

from .common import (
    cache_dir_option,
    console,
    data_root_option,
    device_option,
    emit_json,
    handle_errors,
    int_list,
    json_option,
)


def _show_progress(as_json: bool) -> bool:
    if as_json or not console.is_terminal:
        return False
    return int(os.environ.get("RANK", "0") or 0) == 0


class _Progress:
    """rich progress (images done, images/s, time left) as an `extract` progress callback."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self.p = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class Speed(ProgressColumn):
                def render(self, task):
                    return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s")

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images"),
                Speed(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.p.__enter__()
        return self

    def __call__(self, done: int, total: int):
        if not self.p:
            return
        if self.task is None:
            # images already on disk from an earlier run start the bar but are not part of the speed
            self.task = self.p.add_task(self.label, total=total, completed=done)
            return
        self.p.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.p:
            self.p.__exit__(*exc)
        return False


@click.command("extract")
@click.option(
    "--dataset", required=True, help="Dataset name (see `cmm-cache datasets`), manifest file or image folder."
)
@click.option(
    "--backbone",
    required=True,
    help=(
        "rn50 | rn101 | vit-b-32 | vit-b-16 | any open_clip MODEL/TAG | hf-hub:ORG/REPO (see `cmm-cache backbones`)."
    ),
)
@click.option(
    "--pretrained",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local weights file for the backbone's architecture (no download).",
)
@click.option(
    "--shots",
    default=None,
    callback=int_list,
    help=(
        "Few-shot K values to cache (union of subsets) "
        "[default: 1,2,4,8,16, capped to what a small dataset of your own holds]."
    ),
)
@click.option("--seeds", default="1,2,3", show_default=True, callback=int_list, help="Few-shot seeds to cache.")
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Images per encoder batch (flip views included).",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(0),
    help="DataLoader decoding processes [default: min(8, cores) with a GPU, cores/2 on the CPU].",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Leave out unreadable images (listed in the cache's provenance) instead of stopping.",
)
@click.option("--force", is_flag=True, help="Start over: discard an unfinished run and replace an existing cache.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the cache here instead of <cache-dir>/<dataset>/<backbone>.h5.",
)
@click.option(
    "--download", is_flag=True, help="Fetch the dataset from its public source when it is not under the data root."
)
@data_root_option
@cache_dir_option
@device_option
@json_option
@handle_errors
def extract_cmd(
    dataset,
    backbone,
    pretrained,
    shots,
    seeds,
    batch_size,
    workers,
    skip_bad,
    force,
    out,
    download,
    data_root,
    cache_dir,
    device,
    as_json,
):
    """Encode a dataset once and write its feature cache (resumable; torchrun-aware).

    \b
    cmm-cache extract --dataset dtd --backbone rn50
    torchrun --nproc-per-node 4 -m cmm_cache extract --dataset imagenet --backbone rn50
    """
    from cmm_cache.extract import extract

    with _Progress(_show_progress(as_json), f"{dataset} × {backbone}") as prog:
        r = extract(
            dataset,
            backbone,
            pretrained=pretrained,
            data_root=data_root,
            cache_root=cache_dir,
            out=out,
            shots=shots,
            seeds=seeds,
            device=device,
            batch_size=batch_size,
            num_workers=workers,
            skip_bad=skip_bad,
            force=force,
            progress=prog,
            download=download,
        )
    if r.rank != 0:
        return
    for note in r.notes:
        console.print(f"[yellow]note[/]: {note}")
    if as_json:
        emit_json(r.to_dict())
        return
    if r.status == "up-to-date":
        console.print(f"[green]up to date[/]: {r.path} (use --force to re-extract)")
    else:
        sizes = ", ".join(f"{k} {v}" for k, v in r.splits.items())
        console.print(
            f"[green]wrote[/] {r.path}: {sizes}; {len(r.text_sets)} template set(s); {r.fewshot_groups} few-shot groups"
        )
        console.print(
            f"{r.images_encoded} images encoded ({r.images_resumed} resumed) at {r.images_per_s:.1f} images/s "
            f"on {r.device}" + (f" × {r.world_size} ranks" if r.world_size > 1 else "") + f"; {r.seconds:.1f} s in all"
        )
    if r.skipped:
        console.print(f"[yellow]skipped {len(r.skipped)} unreadable image(s)[/] (listed in the provenance):")
        for s in r.skipped[:10]:
            console.print(f"  {s['split']} row {s['row']}: {s['path']} ({s['error']})")


COMMANDS = [extract_cmd]
