"""`cmm-cache extract`: stage one, encode a dataset once into its feature cache."""

from __future__ import annotations

import os

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
    max_image_pixels_option,
    pretrained_option,
    workers_option,
)
from cmm_cache.cli.progress import Heartbeat, ImageProgress, TextProgress
from cmm_cache.cli.progress import sink as progress_sink
from rich.markup import escape


def _show_progress(as_json: bool) -> bool:
    """Rank 0 of a torchrun job reports progress (of its own share): a bar on a terminal (not with --json),
    plain lines in a log (with --json too: they go to stderr)."""
    if as_json and console.is_terminal:
        return False
    return int(os.environ.get("RANK", "0") or 0) == 0


def _backbone_help() -> str:
    """The registry's aliases, then the other forms a name may take."""
    from cmm_cache.backbones.registry import list_backbones

    aliases = " | ".join(b.name for b in list_backbones())
    return f"{aliases} | any open_clip MODEL/TAG | hf-hub:ORG/REPO (see `cmm-cache backbones`)."


@click.command("extract")
@click.option(
    "--dataset", required=True, help="Dataset name (see `cmm-cache datasets`), manifest file or image folder."
)
@click.option("--backbone", required=True, help=_backbone_help())
@pretrained_option("Local weights file for the backbone's architecture (no download).")
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
@workers_option("DataLoader decoding processes [default: min(8, cores) with a GPU, cores/2 on the CPU].")
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
@click.option(
    "--add-text",
    is_flag=True,
    help=(
        "Add the per-template text embeddings (text/<set>/per_template) to an existing cache that lacks them: "
        "text encoder only, image features kept. Image options are ignored."
    ),
)
@max_image_pixels_option
@click.option(
    "--train-views",
    default=2,
    show_default=True,
    type=click.IntRange(2),
    help=(
        "Views per train image: the centre view, its mirror and N-2 seeded random-resized-crop (+ flip) views, "
        "the augmented views Tip-Adapter, GDA, ProLIP, LP++ and CLAP train on (e.g. 12; ProLIP uses up to 300)."
    ),
)
@click.option(
    "--add-views",
    default=None,
    type=click.IntRange(3),
    help=(
        "Give an existing cache N train views in all: encodes only the missing augmented views (image options "
        "apply; everything else in the cache is kept)."
    ),
)
@click.option("--views-seed", default=None, type=int, help="Seed of the augmented views [default: 0].")
@click.option(
    "--views-crop-scale",
    default=None,
    callback=lambda ctx, p, v: None if v is None else _scale(v),
    help="RandomResizedCrop scale MIN,MAX of the augmented views [default: 0.5,1; CLAP's code uses 0.08,1].",
)
@click.option(
    "--finetune-blocks",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help=(
        "Also store, for train/val/test, the input of the image tower's last K blocks (float16), for "
        "cross-modal-partial-ft. 1 = the last ViT block / the ResNet attention pool (Lin et al.). Large: "
        "RN50 196 KiB, ViT-B/16 296 KiB per image and view."
    ),
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
    add_text,
    max_image_pixels,
    train_views,
    add_views,
    views_seed,
    views_crop_scale,
    finetune_blocks,
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
    out_path = None
    if out:
        from cmm_cache.util.outputs import check_output_path

        out_path = check_output_path(out, "--out")
    show = _show_progress(as_json)
    label = f"extract {_short(dataset)} × {backbone}"
    log = progress_sink(f"{label}: preparing (dataset, plan, files)")
    with Heartbeat(log), TextProgress(f"{label}: text", enabled=show, sink=log) as text_prog:
        stage = _stage_printer(label, log) if show else None
        if add_text:
            from cmm_cache.errors import CmmError
            from cmm_cache.extract.add_text import add_text as run_add_text

            if force:
                raise CmmError("--add-text keeps the cache and adds to it; --force re-extracts it: choose one.")
            r = run_add_text(
                dataset,
                backbone,
                pretrained=pretrained,
                cache_root=cache_dir,
                out=out_path,
                device=device,
                text_progress=text_prog,
                stage=stage,
            )
            return _report(r, as_json)
        if add_views is not None:
            from cmm_cache.errors import CmmError
            from cmm_cache.extract.add_views import add_views as run_add_views

            if force or finetune_blocks or train_views != 2:
                raise CmmError(
                    "--add-views keeps the cache and adds train views to it; it takes no --force, --train-views or "
                    "--finetune-blocks.",
                    "Give the total number of train views to --add-views alone.",
                )
            with ImageProgress(f"add views {_short(dataset)} × {backbone}", enabled=show, sink=log) as prog:
                r = run_add_views(
                    dataset, backbone, add_views, pretrained=pretrained, data_root=data_root, cache_root=cache_dir,
                    out=out_path, device=device, seed=views_seed, crop_scale=views_crop_scale, batch_size=batch_size,
                    num_workers=workers, progress=prog, max_image_pixels=max_image_pixels,
                )  # fmt: skip
            return _report(r, as_json)
        from cmm_cache.extract.pipeline import extract

        said: list[str] = []  # notes printed before encoding started (not printed again at the end)

        def note(msg: str) -> None:
            said.append(msg)
            console.print(f"[yellow]note[/]: {escape(msg)}")
            log.touch()

        with ImageProgress(label, enabled=show, sink=log) as prog:
            r = extract(
                dataset,
                backbone,
                pretrained=pretrained,
                data_root=data_root,
                cache_root=cache_dir,
                out=out_path,
                shots=shots,
                seeds=seeds,
                device=device,
                batch_size=batch_size,
                num_workers=workers,
                skip_bad=skip_bad,
                force=force,
                progress=prog,
                text_progress=text_prog,
                stage=stage,
                download=download,
                max_image_pixels=max_image_pixels,
                train_views=train_views,
                views_seed=0 if views_seed is None else views_seed,
                views_crop_scale=views_crop_scale or (0.5, 1.0),
                finetune_blocks=finetune_blocks,
                on_note=note,
            )
    _report(r, as_json, said)


def _short(dataset: str) -> str:
    """The name your own data goes by (``dtd10`` for ``path/to/dtd10``), else the name as given."""
    from cmm_cache.datasets.names import display_name

    return display_name(dataset)


def _stage_printer(label: str, log):
    def stage(what: str) -> None:
        log.set_status(f"{label}: {what}")
        log.emit(f"{label}: {what}")

    return stage


def _scale(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"expected MIN,MAX (e.g. 0.5,1), got {value!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise click.BadParameter(f"expected 0 < MIN <= MAX <= 1, got {value!r}")
    return lo, hi


def _report(r, as_json: bool, said=()) -> None:
    if r.rank != 0:
        return
    for note in r.notes:
        if note not in said:
            console.print(f"[yellow]note[/]: {escape(note)}")
    if as_json:
        emit_json(r.to_dict())
        return
    if r.status == "text-added":
        console.print(f"[green]added text embeddings[/] to {escape(r.path)}")
    elif r.status == "views-added":
        console.print(f"[green]added train views[/] to {escape(r.path)}")
    elif r.status == "up-to-date":
        console.print(f"[green]up to date[/]: {escape(r.path)} (use --force to re-extract)")
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
            console.print(f"  {s['split']} row {s['row']}: {s['path']} ({s['error']})", markup=False)


COMMANDS = [extract_cmd]
