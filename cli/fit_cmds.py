"""Stage-two commands: `fit`, `eval`, `results merge`, `bench fit`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import cache_dir_option, console, device_option, emit_json, handle_errors, int_list, json_option


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


def _fmt(mean, std):
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _summary_table(summary, title):
    from rich.table import Table

    t = Table(title=title)
    for c in ("dataset", "backbone", "shots", "runs", "test acc", "zero-shot", "CMM logits only", "val acc"):
        t.add_column(c, justify="right" if c not in ("dataset", "backbone") else "left")
    for r in summary:
        t.add_row(
            r["dataset"],
            r["backbone"],
            str(r["shots"]),
            str(r["runs"]),
            _fmt(r["test_acc_mean"], r["test_acc_std"]),
            _fmt(r["zero_shot_test_acc_mean"], r["zero_shot_test_acc_std"]),
            _fmt(r["cmm_only_test_acc_mean"], r["cmm_only_test_acc_std"]),
            _fmt(r["val_acc_mean"], r["val_acc_std"]),
        )
    return t


def _runs_table(results):
    from rich.table import Table

    t = Table()
    for c in ("dataset", "backbone", "shots", "seed", "alpha", "val", "test", "zero-shot", "CMM only", "fit s"):
        t.add_column(c, justify="left" if c in ("dataset", "backbone") else "right")
    for r in results:
        a = "-" if r.get("alpha") is None else f"{r['alpha']:.1f}"
        t.add_row(
            r["dataset"],
            r["backbone"],
            str(r["shots"]),
            str(r["seed"]),
            a,
            f"{r['val_acc']:.2f}",
            f"{r['test_acc']:.2f}",
            f"{r['zero_shot_test_acc']:.2f}",
            f"{r['cmm_only_test_acc']:.2f}",
            f"{r.get('fit_seconds', 0):.1f}",
        )
    return t


def register(main, bench):
    @main.command("fit")
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
        help=(
            "Root for run folders [default: <cache-dir>/runs]; a run goes to <root>/<dataset>/<backbone>/shot_K-seed_S."
        ),
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
                result, arrays = fit_run(
                    cache, k, s, cfg, templates, progress=bar.task(f"{k}-shot seed {s}", iterations)
                )
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
                _summary_table(summary, f"{cache.dataset} × {cache.backbone}: test accuracy (%), mean ± std over seeds")
            )
        if as_json:
            emit_json(results[0] if len(results) == 1 else {"runs": results, "summary": summary})

    @main.command("eval")
    @click.option(
        "--run", "run_path", type=click.Path(file_okay=False), default=None, help="Run folder written by `fit`."
    )
    @click.option(
        "--shift",
        default=None,
        help="Shift set to evaluate an ImageNet run on: imagenet-sketch | imagenet-v2 | imagenet-a | imagenet-r.",
    )
    @click.option(
        "--dataset", default=None, help="Run's dataset [default: imagenet with --shift, else the cache extracted last]."
    )
    @click.option(
        "--backbone",
        default=None,
        help="Run's backbone [default: the only one fitted for that dataset, else the last extract's].",
    )
    @click.option(
        "--shots",
        default=None,
        type=click.IntRange(1),
        help="Run's K [default: 16 with --shift, else the largest K fitted with --seed].",
    )
    @click.option("--seed", default=1, show_default=True, type=click.IntRange(1))
    @click.option(
        "--cache",
        "cache_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Cache to evaluate on [default: the run's own cache, or <cache-dir>/<shift>/<backbone>.h5].",
    )
    @click.option(
        "--runs-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Root of run folders [default: <cache-dir>/runs].",
    )
    @cache_dir_option
    @device_option
    @json_option
    @handle_errors
    def eval_cmd(run_path, shift, dataset, backbone, shots, seed, cache_file, runs_dir, cache_dir, device, as_json):
        """Re-evaluate a fitted run on its test split, or an ImageNet run on a shift set.

        \b
        cmm-cache eval --run RUN_DIR
        cmm-cache eval --shift imagenet-sketch          # the 16-shot seed-1 ImageNet run
        """
        from cmm_cache import paths
        from cmm_cache.cache import open_cache
        from cmm_cache.errors import CmmError
        from cmm_cache.evaluate import evaluate, shift_classes, split_features
        from cmm_cache.results import check_same_backbone, default_run_dir, load_run, resolve_device

        root = Path(runs_dir) if runs_dir else paths.runs_dir(cache_dir)
        if run_path is None:
            last = paths.last_extract(cache_dir) or {}
            dataset = dataset or ("imagenet" if shift else last.get("dataset"))
            if not dataset:
                raise CmmError("Which run? Nothing was extracted yet.", "Pass --run PATH, or --dataset and --backbone.")
            if backbone is None:
                fitted = sorted(p.name for p in (root / paths.dataset_key(dataset)).glob("*") if p.is_dir())
                if len(fitted) == 1:
                    backbone = fitted[0]
                elif not shift and last.get("dataset") == dataset:
                    backbone = last.get("backbone")
                else:
                    k = shots or 16
                    if not fitted:
                        raise CmmError(
                            f"No fitted run for {dataset} under {root}.",
                            f"Fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME --shots {k}`, or "
                            "pass --run PATH.",
                        )
                    raise CmmError(
                        f"Which backbone? Runs for {dataset} exist for: {', '.join(fitted)}.",
                        f"Pass --backbone NAME, or fit one first: `cmm-cache fit --dataset {dataset} --backbone NAME "
                        f"--shots {k}`.",
                    )
            if shots is None and shift:
                shots = 16
            elif shots is None:
                import re

                folder = default_run_dir(root, dataset, backbone, 1, seed).parent
                ks = [
                    int(m.group(1))
                    for p in folder.glob(f"shot_*-seed_{seed}")
                    if (m := re.match(rf"shot_(\d+)-seed_{seed}$", p.name))
                ]
                shots = max(ks) if ks else 16
            run_path = default_run_dir(root, dataset, backbone, shots, seed)
        run = load_run(run_path)
        res = run.result
        dev = resolve_device(device)
        model = run.model.to(dev)
        classes = None
        if shift:
            target = Path(cache_file) if cache_file else paths.cache_path(shift, res["backbone"], cache_dir)
            cache = open_cache(target)
            check_same_backbone(run, cache)
            classes = shift_classes(run.classnames, run.wnids, cache)
        else:
            target = Path(cache_file) if cache_file else Path(res.get("cache") or "")
            if not cache_file and not target.is_file():  # the recorded file moved: try the standard place
                target = paths.cache_path(res["dataset"], res["backbone"], cache_dir)
            cache = open_cache(target)
            if cache.provenance_sha256 != res.get("cache_provenance_sha256"):
                raise CmmError(
                    f"{cache.path} is not the cache run {run.path} was fitted on (provenance hash differs).",
                    "It was re-extracted or belongs to another backbone; fit the run again on this cache.",
                )
        if "test" not in cache.split_names:
            raise CmmError(f"{cache.path} has no test split to evaluate on.")
        x, y = split_features(cache.split("test"), None, dev)
        import torch

        cls = torch.as_tensor(classes, device=dev) if classes is not None else None
        acc = evaluate(model, x, y, res.get("alpha"), classes=cls)
        out = {
            "run": str(run.path),
            "dataset": cache.dataset,
            "run_dataset": res["dataset"],
            "backbone": res["backbone"],
            "shots": res["shots"],
            "seed": res["seed"],
            "alpha": res.get("alpha"),
            "test_acc": acc["acc"],
            "zero_shot_test_acc": acc["zero_shot_acc"],
            "cmm_only_test_acc": acc["cmm_only_acc"],
            "num_test": int(len(y)),
            "classes_scored": int(len(classes)) if classes is not None else len(run.classnames),
            "cache": str(cache.path),
            "cache_provenance_sha256": cache.provenance_sha256,
        }
        a = "-" if out["alpha"] is None else f"{out['alpha']:.1f}"
        console.print(
            f"{res['dataset']} run ({res['shots']}-shot seed {res['seed']}, alpha {a}) on {cache.dataset}: "
            f"test {out['test_acc']:.2f} %  (zero-shot {out['zero_shot_test_acc']:.2f}, "
            f"CMM logits only {out['cmm_only_test_acc']:.2f}; {out['classes_scored']} classes, {out['num_test']} "
            "images)"
        )
        if as_json:
            emit_json(out)

    @main.group("results")
    def results_group():
        """Collect run folders into one table / CSV."""

    @results_group.command("merge")
    @click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
    @click.option(
        "--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write one row per run here."
    )
    @json_option
    @handle_errors
    def results_merge(run_dirs, csv_path, as_json):
        """Merge result.json of RUN_DIRS (run folders, or folders holding them) into one table.

        \b
        cmm-cache results merge ~/.cache/cmm-cache/runs/dtd --csv dtd.csv
        """
        from cmm_cache.results import read_results, summarize, write_csv

        results = read_results(run_dirs)
        summary = summarize(results)
        console.print(_runs_table(results))
        console.print(_summary_table(summary, "test accuracy (%), mean ± std over seeds"))
        if csv_path:
            write_csv(results, csv_path)
            console.print(f"wrote {len(results)} rows to {csv_path}")
        if as_json:
            emit_json({"runs": results, "summary": summary})

    @bench.command("fit")
    @click.option("--classes", default=1000, show_default=True, type=click.IntRange(2))
    @click.option("--dim", default=1024, show_default=True, type=click.IntRange(2))
    @click.option(
        "--shots",
        default=16,
        show_default=True,
        type=click.IntRange(1),
        help="Train images per class (two views each become 2×shots samples per class).",
    )
    @click.option("--iterations", default=16000, show_default=True, type=click.IntRange(1))
    @click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
    @click.option(
        "--test-size",
        default=50000,
        show_default=True,
        type=click.IntRange(0),
        help="Synthetic test images for timing alpha search + test evaluation (0: skip).",
    )
    @click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads [default: as fit].")
    @click.option(
        "--repeat",
        default=1,
        show_default=True,
        type=click.IntRange(1),
        help="Time the fast fit N times; report the fastest.",
    )
    @click.option("--reference", is_flag=True, help="Also time the plain autograd/nn.Module transcription.")
    @click.option(
        "--reference-iterations",
        default=None,
        type=click.IntRange(1),
        help="Time the reference on fewer iterations and scale to --iterations (marked as extrapolated).",
    )
    @device_option
    @json_option
    @handle_errors
    def bench_fit(
        classes,
        dim,
        shots,
        iterations,
        batch_size,
        test_size,
        threads,
        repeat,
        reference,
        reference_iterations,
        device,
        as_json,
    ):
        """Time one CMM fit on synthetic features (and the plain transcription with --reference).

        \b
        cmm-cache bench fit --classes 47 --dim 1024 --reference
        cmm-cache bench fit --classes 1000 --dim 1024 --shots 16
        """
        from cmm_cache.results import bench_fit as run_bench

        out = run_bench(
            classes=classes,
            dim=dim,
            shots=shots,
            iterations=iterations,
            batch_size=batch_size,
            test_size=test_size,
            threads=threads,
            repeat=repeat,
            reference=reference,
            reference_iterations=reference_iterations,
            device=device,
            log=console.print,
        )
        if as_json:
            emit_json(out)
