"""`cmm-cache fit`: stage two, train on cached features and evaluate."""

from __future__ import annotations

from pathlib import Path

import click

from .common import cache_dir_option, console, device_option, emit_json, handle_errors, int_list, json_option
from .tables import summary_table


class _Bar:
    """rich progress over training iterations; silent with --json or off a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.p = enabled and console.is_terminal, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.p.__enter__()
        return self

    def task(self, label: str, total: int):
        if not self.p:
            return None
        tid = self.p.add_task(label, total=total, loss="")

        def update(done, loss):
            self.p.update(tid, completed=done, loss=f"loss {loss:.4f}" if loss is not None else "")

        return update

    def __exit__(self, *exc):
        if self.p:
            self.p.__exit__(*exc)
        return False


def _resolve_cache(cache, dataset, backbone, cache_dir) -> Path:
    from cmm_cache import paths
    from cmm_cache.errors import CmmError

    if cache:
        return Path(cache)
    if dataset or backbone:
        if not (dataset and backbone):
            raise CmmError("Give both --dataset and --backbone (or --cache PATH).")
        return paths.cache_path(dataset, backbone, cache_dir)
    last = paths.last_extract(cache_dir)
    if not last:
        raise CmmError(
            f"No cache to fit: nothing was extracted into {paths.cache_dir(cache_dir)} yet.",
            "Run `cmm-cache extract --dataset NAME --backbone NAME` first, or pass --cache PATH.",
        )
    console.print(
        f"Using the cache extracted last: [bold]{last['dataset']}[/] × [bold]{last['backbone']}[/] ({last['path']})"
    )
    return Path(last["path"])


@click.command("fit")
@click.option(
    "--cache",
    "cache_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Any cache file following schema cmm-cache/1 (default: the cache extracted last).",
)
@click.option("--dataset", default=None, help="With --backbone: use <cache-dir>/<dataset>/<backbone>.h5.")
@click.option("--backbone", default=None)
@click.option(
    "--shots",
    default=None,
    callback=int_list,
    help="Few-shot K list, e.g. 1,2,4,8,16 [default: every K in the cache].",
)
@click.option(
    "--seeds",
    "--seed",
    "seeds",
    default=None,
    callback=int_list,
    help="Seed list, e.g. 1,2,3 [default: every seed the cache holds for each K].",
)
@click.option("--iterations", default=16000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=1e-4, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--warmup",
    default=50,
    show_default=True,
    type=click.IntRange(0),
    help="Linear warm-up iterations, then cosine to 1e-5.",
)
@click.option("--templates", default=None, help="Text template set in the cache [default: the cache's default].")
@click.option("--no-map", is_flag=True, help="Ablation: no W (only the prototypes T are learned).")
@click.option("--no-triplet", is_flag=True, help="Ablation: no triplet loss.")
@click.option(
    "--cmm-only", is_flag=True, help="Ablation: train and predict with the CMM logits alone (no CLIP fusion)."
)
@click.option(
    "--alpha", default=None, type=click.FloatRange(min=0), help="Ablation: fixed fusion alpha (no search on val)."
)
@click.option("--normalize-T-in-s", "normalize_t_in_s", is_flag=True, help="Open choice: s uses row-normalized T.")
@click.option(
    "--fusion",
    type=click.Choice(["prob", "logit"]),
    default="prob",
    show_default=True,
    help="Open choice: alpha·softmax(cmm)+softmax(clip) (prob) or softmax(alpha·cmm+clip) (logit).",
)
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(1),
    help="CPU threads for training [default: 1 below 768-d features, else torch's default].",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help=("Root for run folders [default: <cache-dir>/runs]; a run goes to <root>/<dataset>/<backbone>/shot_K-seed_S."),
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Exact run folder (one run), or the folder that receives shot_K-seed_S folders (several).",
)
@cache_dir_option
@device_option
@json_option
@handle_errors
def fit_cmd(
    cache_file,
    dataset,
    backbone,
    shots,
    seeds,
    iterations,
    batch_size,
    lr,
    weight_decay,
    warmup,
    templates,
    no_map,
    no_triplet,
    cmm_only,
    alpha,
    normalize_t_in_s,
    fusion,
    threads,
    runs_dir,
    out,
    cache_dir,
    device,
    as_json,
):
    """Train CMM (W and T) on cached features; choose alpha on val; evaluate on test.

    \b
    cmm-cache fit --shots 4                       # the cache extracted last
    cmm-cache fit --dataset dtd --backbone rn50 --shots 1,2,4,8,16 --seeds 1,2,3
    cmm-cache fit --cache FILE.h5 --shots 16 --seed 1 --json
    """
    from cmm_cache import paths
    from cmm_cache.cache import open_cache
    from cmm_cache.errors import CmmError
    from cmm_cache.fit import FitConfig
    from cmm_cache.results import default_run_dir, fit_run, resolve_device, run_name, summarize, write_run

    cache = open_cache(_resolve_cache(cache_file, dataset, backbone, cache_dir))
    groups = cache.fewshot_groups
    if not groups:
        raise CmmError(f"{cache.path} holds no few-shot subsets.", "Re-extract it with --shots/--seeds.")
    ks = shots or sorted({k for k, _ in groups})
    todo = []
    for k in ks:
        have = sorted(s for kk, s in groups if kk == k)
        for s in seeds or have or [1]:
            if (k, s) not in groups:
                held = ", ".join(f"{a}/{b}" for a, b in groups)
                raise CmmError(
                    f"{cache.path} has no few-shot subset for {k} shots, seed {s}.",
                    f"It holds (shots/seed): {held}. Re-run `cmm-cache extract` with --shots/--seeds covering it.",
                )
            todo.append((k, s))
    if templates is not None:
        cache.text(templates)  # refuse an unknown set before training anything
    dev = resolve_device(device)
    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)

    results = []
    with _Bar(not as_json) as bar:
        for k, s in todo:
            cfg = FitConfig(
                iterations=iterations,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                warmup=warmup,
                use_map=not no_map,
                triplet=not no_triplet,
                cmm_only=cmm_only,
                alpha=alpha,
                normalize_T_in_s=normalize_t_in_s,
                fusion=fusion,
                seed=s,
                device=str(dev),
                threads=threads,
            )
            result, arrays = fit_run(cache, k, s, cfg, templates, progress=bar.task(f"{k}-shot seed {s}", iterations))
            if out:
                run_dir = Path(out) if len(todo) == 1 else Path(out) / run_name(k, s)
            else:
                run_dir = default_run_dir(root, cache.dataset, cache.backbone, k, s)
            write_run(run_dir, result, arrays, cache)
            result["run"] = str(run_dir)
            results.append(result)
            a = "-" if result["alpha"] is None else f"{result['alpha']:.1f}"
            console.print(
                f"{cache.dataset} × {cache.backbone}  {k}-shot seed {s}: test {result['test_acc']:.2f} %  "
                f"(zero-shot {result['zero_shot_test_acc']:.2f}, CMM logits only "
                f"{result['cmm_only_test_acc']:.2f}, "
                f"alpha {a}, val {result['val_acc']:.2f})  {result['fit_seconds']:.1f} s  -> {run_dir}"
            )
    summary = summarize(results)
    if len(results) > 1:
        console.print(
            summary_table(summary, f"{cache.dataset} × {cache.backbone}: test accuracy (%), mean ± std over seeds")
        )
    if as_json:
        emit_json(results[0] if len(results) == 1 else {"runs": results, "summary": summary})


COMMANDS = [fit_cmd]
