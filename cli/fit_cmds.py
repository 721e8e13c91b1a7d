"""`cmm-cache fit`: stage two, fit a method on cached features and evaluate it."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource
from cmm_cache.cli.common import (
    cache_dir_option,
    cache_options,
    console,
    device_option,
    emit_json,
    handle_errors,
    json_option,
    runs_dir_option,
    shots_seeds_options,
)
from cmm_cache.cli.progress import Bars, Heartbeat
from cmm_cache.cli.progress import sink as progress_sink
from cmm_cache.cli.tables import summary_table
from rich.markup import escape


class MethodChoice(click.Choice):
    """The registered methods, looked up only when `fit --help` or a value needs them (keeps the CLI fast)."""

    def __init__(self):
        self.case_sensitive = True

    @property
    def choices(self):
        from cmm_cache.methods.registry import list_methods

        return tuple(list_methods())

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns it; the registry is the source
        pass

    def convert(self, value, param, ctx):
        """A method's name as `cmm-cache methods` lists it, also with `_` for `-` (as the registry accepts)."""
        from cmm_cache.errors import CmmError
        from cmm_cache.methods.registry import get_method

        try:
            return get_method(str(value)).name
        except CmmError:
            return super().convert(value, param, ctx)  # click's own message, listing the choices


# CMM's own flags -> (option key, value when given). They set the method's option of that name.
CMM_FLAGS = {
    "iterations": ("iterations", None),
    "batch_size": ("batch_size", None),
    "lr": ("lr", None),
    "weight_decay": ("weight_decay", None),
    "warmup": ("warmup", None),
    "no_map": ("use_map", False),
    "no_triplet": ("triplet", False),
    "cmm_only": ("cmm_only", True),
    "alpha": ("alpha", None),
    "normalize_t_in_s": ("normalize_T_in_s", True),
    "fusion": ("fusion", None),
    "threads": ("threads", None),
}


def _method_options(ctx: click.Context, method: str, values: dict, pairs) -> dict:
    """The options a user set: CMM's flags given on the command line, then --set KEY=VALUE."""
    from cmm_cache.cli.options import parse_options

    from cmm_cache.errors import CmmError
    from cmm_cache.methods.registry import get_method

    m = get_method(method)
    opts = {}
    for param, (key, fixed) in CMM_FLAGS.items():
        if ctx.get_parameter_source(param) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        flag = "--" + param.replace("_", "-").replace("-t-", "-T-")
        if key not in m.defaults:
            raise CmmError(
                f"{flag} is an option of cmm; method '{method}' has no option {key!r}.",
                f"Set {method}'s options with --set KEY=VALUE (its options: "
                f"{', '.join(sorted(m.defaults)) or 'none'}).",
            )
        opts[key] = values[param] if fixed is None else fixed
    extra = parse_options(method, pairs)
    both = sorted(set(opts) & set(extra))
    if both:
        raise CmmError(f"Option {', '.join(both)} given both as a flag and with --set.", "Give each option once.")
    return {**opts, **extra}


def resolve_cache(cache, dataset, backbone, cache_dir) -> Path:
    """--cache, else --dataset/--backbone in the cache dir, else the cache extracted last (and say which)."""
    from cmm_cache.cache.locate import find_cache, last_extract
    from cmm_cache.datasets.names import display_name
    from cmm_cache.errors import CmmError
    from cmm_cache.util import paths

    if cache:
        return Path(cache)
    if dataset or backbone:
        if not (dataset and backbone):
            raise CmmError("Give both --dataset and --backbone (or --cache PATH).")
        return find_cache(dataset, backbone, cache_dir)
    last = last_extract(cache_dir)
    if not last:
        raise CmmError(
            f"No cache to fit: nothing was extracted into {paths.cache_dir(cache_dir)} yet.",
            "Run `cmm-cache extract --dataset NAME --backbone NAME` first, or pass --cache PATH.",
        )
    console.print(
        f"Using the cache extracted last: {display_name(last['dataset'])} × {last['backbone']} ({last['path']})",
        markup=False,
        soft_wrap=True,
    )
    return Path(last["path"])


def _same_backbone(given: str, recorded: str) -> bool:
    """`--backbone` names the backbone a cache was extracted with: the same name (any case), or an alias and
    the open_clip name it stands for (``rn50`` and ``RN50-quickgelu/openai``)."""
    from cmm_cache.backbones.registry import resolve_backbone
    from cmm_cache.util.paths import safe_name

    if safe_name(given.strip()).lower() == safe_name(recorded.strip()).lower():
        return True
    try:
        a, b = resolve_backbone(given), resolve_backbone(recorded)
    except Exception:  # an unknown name (CmmError), or open_clip not loading: not shown to be the same
        return False
    return (a.model, a.pretrained) == (b.model, b.pretrained)


def _same_dataset(given: str, cache) -> bool:
    """`--dataset` names a cache's dataset: its short name, the name or path it was extracted with, or an alias."""
    from cmm_cache.datasets.names import dataset_key, display_name

    if given in (cache.dataset, cache.dataset_name) or display_name(given) == cache.dataset_name:
        return True
    return dataset_key(given) == dataset_key(cache.dataset)


def open_selected_cache(cache_file, dataset, backbone, cache_dir):
    """The cache `fit` and `compare` read: :func:`resolve_cache`, opened. `--dataset`/`--backbone` given beside
    `--cache` must name that cache's dataset and backbone: a disagreement is refused, never silently ignored."""
    from cmm_cache.cache.reader import open_cache
    from cmm_cache.errors import CmmError

    cache = open_cache(resolve_cache(cache_file, dataset, backbone, cache_dir))
    if cache_file:
        wrong = []
        if dataset and not _same_dataset(dataset, cache):
            wrong.append(f"holds dataset {cache.dataset_name}, not --dataset {dataset}")
        if backbone and not _same_backbone(backbone, cache.backbone):
            wrong.append(f"was extracted with backbone {cache.backbone}, not --backbone {backbone}")
        if wrong:
            raise CmmError(
                f"--cache {cache_file} " + " and ".join(wrong) + ".",
                "Pass --cache alone (its dataset and backbone are recorded in it), or --dataset and --backbone "
                "without --cache.",
            )
    return cache


def _run_line(cache, r: dict) -> str:
    a = "" if r.get("alpha") is None else f", alpha {r['alpha']:.1f}"
    zs = "-" if r.get("zero_shot_test_acc") is None else f"{r['zero_shot_test_acc']:.2f}"
    only = "" if r.get("cmm_only_test_acc") is None else f", CMM logits only {r['cmm_only_test_acc']:.2f}"
    line = (
        f"{cache.dataset_name} × {cache.backbone}  {r['method']} {r['shots']}-shot seed {r['seed']}: "
        f"test {r['test_acc']:.2f} %  (zero-shot {zs}{only}{a}, val {r['val_acc']:.2f})  "
        f"{r['fit_seconds']:.1f} s"
    )
    if r.get("run"):
        note = ""
        if r.get("skipped"):
            note = " (already fitted: kept; --force fits it again)"
        elif r.get("replaced"):
            note = " (replaced the run that was there)"
        rid = f"run {r['run_id']}: " if r.get("run_id") else ""
        line += f"  -> {rid}{r['run']}{note}"
    return line


@click.command("fit")
@cache_options()
@shots_seeds_options
@click.option(
    "--method", default="cmm", show_default=True, type=MethodChoice(), help="The method to fit (`cmm-cache methods`)."
)
@click.option(
    "--set",
    "set_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method option (repeatable), typed by its default, e.g. --set iterations=2000 --set use_map=false.",
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
@click.option(
    "--views",
    default=None,
    help=(
        "Train views to use instead of the method's own (see `cmm-cache methods`): names (center,hflip), "
        "rrc:N (the first N augmented views) or rrc (all of them)."
    ),
)
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
    help="CPU threads for training [default: chosen by timing while the run goes, see README 'Speed'].",
)
@runs_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Exact run folder (one run), or the folder that receives shot_K-seed_S folders (several).",
)
@click.option("--force", is_flag=True, help="Fit again runs already fitted, and replace another run found in --out.")
@cache_dir_option
@device_option
@json_option
@click.pass_context
@handle_errors
def fit_cmd(ctx, cache_file, dataset, backbone, shots, seeds, method, set_pairs, templates, views, runs_dir, out,
            force, cache_dir, device, as_json, **cmm_flags):  # fmt: skip
    """Fit a method (default: CMM, training W and T) on cached features; choose its
    hyper-parameters on val; evaluate on test. Each configuration gets its own run folder.

    The flags --iterations ... --threads are CMM's options; they set the option
    of that name of any method that has one. Other options: --set KEY=VALUE.

    \b
    cmm-cache fit --shots 4                       # the cache extracted last
    cmm-cache fit --dataset dtd --backbone rn50 --shots 1,2,4,8,16 --seeds 1,2,3
    cmm-cache fit --cache FILE.h5 --shots 16 --seed 1 --json
    cmm-cache fit --shots 16 --no-map             # an ablation: another folder than the full CMM's
    cmm-cache fit --method zero-shot              # any registered method; its options with --set KEY=VALUE
    """

    from cmm_cache.runs.protocol import fit_protocol, plan
    from cmm_cache.runs.results import summarize
    from cmm_cache.util import paths
    from cmm_cache.util.device import resolve_device
    from cmm_cache.util.outputs import check_output_path

    options = _method_options(ctx, method, cmm_flags, set_pairs)
    if out is not None:
        out = check_output_path(out, "--out", folder=True)
    cache = open_selected_cache(cache_file, dataset, backbone, cache_dir)
    root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
    results = []
    log = progress_sink(f"fit {method} on {cache.dataset_name} × {cache.backbone}")
    jobs = plan(cache, shots, seeds)  # (a subset the cache lacks is refused here, before anything trains)
    log.emit(f"fit {method} on {cache.dataset_name} × {cache.backbone}: {_plan_text(jobs)}")
    with Heartbeat(log), Bars(not as_json, log) as bars:

        def progress(k, s):
            update = bars.task(f"fit {method} {k}-shot seed {s}", None, "it")
            return None if update is None else (lambda done, total, loss: update(done, total, _loss(loss)))

        for r in fit_protocol(
            cache,
            shots,
            seeds,
            method=method,
            options=options,
            templates=templates,
            device=resolve_device(device),
            runs_root=root,
            out=out,
            force=force,
            progress=progress,
            views=views,
        ):
            results.append(r)
            console.print(_run_line(cache, r), markup=False, soft_wrap=True)
            for w in r.get("warnings") or []:
                console.print(f"[yellow]warning[/]: {escape(w)}")
            log.touch()
    summary = summarize(results)
    if len(results) > 1:
        over = "mean ± std over seeds" if any(s["runs"] > 1 for s in summary) else "one seed each"
        console.print(summary_table(summary, f"{cache.dataset_name} × {cache.backbone}: test accuracy (%), {over}"))
    if as_json:
        emit_json(results[0] if len(results) == 1 else {"runs": results, "summary": summary})


def _plan_text(jobs) -> str:
    """``3 runs (4-shot seeds 1, 2, 3)``: what a protocol will fit, as one phrase."""
    by_k: dict[int, list[int]] = {}
    for k, s in jobs:
        by_k.setdefault(k, []).append(s)
    parts = [f"{k}-shot seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for k, v in by_k.items()]
    return f"{len(jobs)} run{'s' if len(jobs) != 1 else ''} ({'; '.join(parts)})"


def _loss(loss) -> str:
    return "" if loss is None else f"loss {loss:.4f}"


COMMANDS = [fit_cmd]
