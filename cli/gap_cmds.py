"""`cmm-cache gap`: the modality gap of a cache or of fitted runs, as numbers and as a picture."""

from __future__ import annotations

import click
from cmm_cache.cli.common import (
    cache_dir_option,
    console,
    device_option,
    emit_json,
    handle_errors,
    json_option,
)


def gap_runs_option(f):
    """--run RUN, repeatable: run folders to measure (several: one figure panel and one table column each)."""
    return click.option(
        "--run",
        "run_paths",
        multiple=True,
        type=click.Path(file_okay=False),
        help="Run folder written by `fit` (repeat for several: CMM's Fig. 10, one panel and column per run).",
    )(f)


@click.command("gap")
@click.option(
    "--cache",
    "cache_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A cache file: alone, the zero-shot gap of its features; with --run, where the runs' cache is now "
    "(checked against the runs).",
)
@gap_runs_option
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train"]),
    default="test",
    show_default=True,
    help="Images to measure: every test (val) row of the cache; train: the run's few-shot train rows "
    "(with --cache alone: every train row).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the picture into this .png or .svg: before | after projections and the Fig. 7 histograms.",
)
@click.option(
    "--projection",
    type=click.Choice(["pca", "tsne", "umap"]),
    default="pca",
    show_default=True,
    help="2-D projection of the picture. PCA keeps the offset between the modalities; t-SNE (scikit-learn) "
    "and UMAP (umap-learn) keep neighbourhoods, not distances.",
)
@click.option(
    "--classes",
    "num_classes",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Classes drawn in the picture (a seeded subset when there are more; the numbers use every class).",
)
@click.option(
    "--per-class",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Images per class drawn as dots (a seeded subset; the numbers use every image).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Seed of the sampled image pairs and of the drawn classes and dots.",
)
@click.option(
    "--max-pairs",
    default=200_000,
    show_default=True,
    type=click.IntRange(1),
    help="Percentiles of a similarity distribution with more values come from a seeded sample of this many "
    "(means are always exact).",
)
@click.option(
    "--l2m-normalized-means",
    is_flag=True,
    help="Also report L2M with each class mean re-normalized (not comparable with published L2M values).",
)
@cache_dir_option
@device_option
@json_option
@handle_errors
def gap_cmd(cache_file, run_paths, split, plot_path, projection, num_classes, per_class, seed, max_pairs,
            l2m_normalized_means, cache_dir, device, as_json):  # fmt: skip
    """How far apart CLIP's image and text features are, before and after a run's map.

    On L2-normalized features of one split: before = the images v̂ against the zero-shot
    text prototypes T0; after (CMM runs) = normalize(v̂W + v̂) against the run's T, normalized.

    \b
    L2M     ‖mean_c m_c − mean_c t_c‖, m_c the mean of class c's normalized images (not
            re-normalized, as Liang et al.'s code; the centre is class-balanced)
    prototype gap   mean over classes of ‖μ_c − t_c‖ and cos(μ_c, t_c), μ_c = normalized m_c
    RMG     m / (m + (d_I + d_T)/2), Schrodi et al.'s official code: m = 1 − (mean matched
            cos + 1)/2, replaced by 1e-3 only when m ≤ 0 (torch.where(m > 0, m, 1e-3))
    Fig. 7  matched, mismatched image–text and image–image (other class) cosines
    Fig. 3  intra- (image means), inter- (zero-shot) and cross-modal (CMM logits) accuracy
    Fig. 9  inconsistent errors, correct flips, broken predictions (CMM runs, test split)

    \b
    cmm-cache gap --cache FILE.h5                      # the zero-shot gap of a cache
    cmm-cache gap --run RUN --plot gap.png --json      # before / after of a run
    cmm-cache gap --run FULL --run NO_MAP --run NO_TRIPLET --run NEITHER --plot fig10.png
    """
    from cmm_cache.analysis import gap_run
    from cmm_cache.util.device import resolve_device

    if plot_path is not None:
        gap_run.check_plot(plot_path, projection)  # before anything is read or computed
    dev = resolve_device(device)
    plan = gap_run.plan_gap(cache_file, run_paths, split=split, cache_dir=cache_dir)
    result, data = gap_run.compute_gap(
        plan, max_pairs=max_pairs, seed=seed, device=dev, l2m_normalized_means=l2m_normalized_means, return_data=True
    )
    result["plot"] = None
    if plot_path is not None:
        result["plot"] = gap_run.draw_gap_result(
            plan, result, data, plot_path, projection=projection, num_classes=num_classes, max_per_class=per_class,
            seed=seed,
        )  # fmt: skip
    _print_table(gap_run.gap_table(result))
    if result["plot"]:
        console.print(f"picture: {result['plot']['path']}")
    if as_json:
        emit_json(result)


def _print_table(table: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(table["title"]))
    for i, c in enumerate(table["columns"]):
        t.add_column(escape(c), justify="left" if i == 0 else "right")
    for row in table["rows"]:
        t.add_row(*[escape(str(c)) for c in row])
    # A terminal gets its width (cells wrap); a pipe or log file gets the whole table unwrapped.
    out = console
    if not console.is_terminal:
        from rich.console import Console

        wide = console.measure(t, options=console.options.update_width(10_000)).maximum
        out = Console(file=console.file, width=max(80, wide), highlight=False)
    out.print(t)
    for n in table["notes"]:
        console.print(escape(f"note: {n}"))


COMMANDS = [gap_cmd]
