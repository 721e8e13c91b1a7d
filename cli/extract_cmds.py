"""Stage-one commands: `extract`, `backbones`, `cache ls|info|verify`, `bench extract`."""

from __future__ import annotations

import os
import sys

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


def register(main, bench):
    @main.command("extract")
    @click.option(
        "--dataset", required=True, help="Dataset name (see `cmm-cache datasets`), manifest file or image folder."
    )
    @click.option(
        "--backbone",
        required=True,
        help=(
            "rn50 | rn101 | vit-b-32 | vit-b-16 | any open_clip MODEL/TAG | hf-hub:ORG/REPO "
            "(see `cmm-cache backbones`)."
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
                f"[green]wrote[/] {r.path}: {sizes}; {len(r.text_sets)} template set(s); {r.fewshot_groups} few-shot "
                "groups"
            )
            console.print(
                f"{r.images_encoded} images encoded ({r.images_resumed} resumed) at {r.images_per_s:.1f} images/s "
                f"on {r.device}"
                + (f" × {r.world_size} ranks" if r.world_size > 1 else "")
                + f"; {r.seconds:.1f} s in all"
            )
        if r.skipped:
            console.print(f"[yellow]skipped {len(r.skipped)} unreadable image(s)[/] (listed in the provenance):")
            for s in r.skipped[:10]:
                console.print(f"  {s['split']} row {s['row']}: {s['path']} ({s['error']})")

    @main.command("backbones")
    @json_option
    @handle_errors
    def backbones_cmd(as_json):
        """List the registered backbone aliases (any open_clip MODEL/TAG works too)."""
        from cmm_cache.backbones import list_backbones

        rows = [
            {
                "name": b.name,
                "open_clip_model": b.model,
                "pretrained": b.pretrained or "random weights",
                "notes": b.notes,
            }
            for b in list_backbones()
        ]
        if as_json:
            emit_json({"backbones": rows})
            return
        from rich.table import Table

        t = Table(title="backbones")
        for col in ("name", "open_clip model", "pretrained", "notes"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["open_clip_model"], r["pretrained"], r["notes"])
        console.print(t)
        console.print(
            "Also: any open_clip MODEL/TAG (e.g. ViT-B-32/laion2b_s34b_b79k), hf-hub:ORG/REPO, or --pretrained PATH."
        )

    @main.group("cache")
    def cache_group():
        """Inspect caches: ls, info, verify."""

    def _resolve_path(path, dataset, backbone, cache_dir):
        from cmm_cache.errors import CmmError
        from cmm_cache.paths import cache_path, last_extract

        if path:
            return path
        if dataset and backbone:
            return str(cache_path(dataset, backbone, cache_dir))
        if dataset or backbone:
            raise CmmError("Give both --dataset and --backbone (or a PATH).")
        last = last_extract(cache_dir)
        if last:
            return last["path"]
        raise CmmError("No cache given and none extracted yet.", "Pass PATH or --dataset NAME --backbone NAME.")

    @cache_group.command("ls")
    @cache_dir_option
    @json_option
    @handle_errors
    def cache_ls(cache_dir, as_json):
        """Table of the caches in the cache dir (and unfinished extractions)."""
        from cmm_cache.cache import list_caches
        from cmm_cache.paths import cache_dir as resolve_cache_dir

        rows = list_caches(cache_dir)
        root = str(resolve_cache_dir(cache_dir))
        if as_json:
            emit_json({"cache_dir": root, "caches": rows})
            return
        if not rows:
            console.print(f"No caches in {root}. Run `cmm-cache extract --dataset NAME --backbone NAME`.")
            return
        from rich.table import Table

        t = Table(title=f"caches in {root}")
        for col in ("dataset", "backbone", "classes", "splits", "size", "created"):
            t.add_column(col)
        for r in rows:
            if r.get("unfinished"):
                t.add_row(
                    r["dataset"],
                    r["backbone"],
                    "",
                    f"[yellow]unfinished: {r['chunks_done']} chunk(s) done[/]",
                    r["size"],
                    "",
                )
            elif "error" in r:
                t.add_row(r["path"], "", "", f"[red]{r['error']}[/]", r["size"], "")
            else:
                splits = " ".join(f"{k}:{v}" for k, v in r["splits"].items())
                t.add_row(
                    r["dataset"], r["backbone"], str(r["classes"]), splits, r["size"], str(r.get("created") or "")
                )
        console.print(t)

    @cache_group.command("info")
    @click.argument("path", required=False, type=click.Path(dir_okay=False))
    @click.option("--dataset", default=None)
    @click.option("--backbone", default=None)
    @cache_dir_option
    @json_option
    @handle_errors
    def cache_info_cmd(path, dataset, backbone, cache_dir, as_json):
        """Attributes, provenance and nodes of one cache (PATH, or --dataset/--backbone, else the last extracted)."""
        import json as _json

        from cmm_cache.cache import cache_info

        info = cache_info(_resolve_path(path, dataset, backbone, cache_dir))
        if as_json:
            emit_json(info)
            return
        console.print(f"[bold]{info['path']}[/] ({info['size_bytes']} bytes)")
        for k, v in info["attrs"].items():
            console.print(f"  {k}: {v}")
        console.print(
            "  provenance: " + _json.dumps(info["provenance"], indent=2, sort_keys=True).replace("\n", "\n  ")
        )
        from rich.table import Table

        t = Table()
        for col in ("node", "shape", "dtype", "checksum", "attrs"):
            t.add_column(col)
        for n in info["nodes"]:
            t.add_row(
                n["node"],
                str(n["shape"]),
                n["dtype"],
                "yes" if n["checksum"] else "[red]no[/]",
                ", ".join(f"{k}={v[:40]}" for k, v in n["attrs"].items()),
            )
        console.print(t)

    @cache_group.command("verify")
    @click.argument("path", required=False, type=click.Path(dir_okay=False))
    @click.option("--dataset", default=None)
    @click.option("--backbone", default=None)
    @click.option("--all", "all_", is_flag=True, help="Verify every cache in the cache dir.")
    @cache_dir_option
    @json_option
    @handle_errors
    def cache_verify(path, dataset, backbone, all_, cache_dir, as_json):
        """Read every byte (HDF5 checksums) and check the schema; exit 1 on damage."""
        from cmm_cache.cache import list_caches, verify_cache

        if all_:
            paths = [r["path"] for r in list_caches(cache_dir) if not r.get("unfinished")]
        else:
            paths = [_resolve_path(path, dataset, backbone, cache_dir)]
        report = {p: verify_cache(p) for p in paths}
        bad = {p: v for p, v in report.items() if v}
        if as_json:
            emit_json({"ok": not bad, "caches": [{"path": p, "ok": not v, "problems": v} for p, v in report.items()]})
        else:
            for p, v in report.items():
                if v:
                    console.print(f"[bold red]damaged[/]: {p}")
                    for msg in v:
                        console.print(f"  - {msg}")
                else:
                    console.print(f"[green]ok[/]: {p}")
            if bad:
                console.print(
                    "Re-extract a damaged cache with `cmm-cache extract --dataset NAME --backbone NAME --force`."
                )
        if bad:
            sys.exit(1)

    @bench.command("extract")
    @click.option(
        "--data",
        "data_dir",
        required=True,
        type=click.Path(file_okay=False, exists=True),
        help="Image folder (one sub-folder per class), e.g. ../shared/real_images/dtd10.",
    )
    @click.option(
        "--backbone",
        default="rn50-arch",
        show_default=True,
        help="Backbone (rn50-arch = RN50 with random weights, no download).",
    )
    @click.option("--pretrained", type=click.Path(dir_okay=False), default=None)
    @click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
    @click.option(
        "--workers", default=None, type=click.IntRange(0), help="DataLoader decoding processes [default: as extract]."
    )
    @click.option("--limit", default=None, type=click.IntRange(1), help="Use only the first N images.")
    @click.option(
        "--repeat",
        default=3,
        show_default=True,
        type=click.IntRange(1),
        help="Alternate the two measurements N times; report medians.",
    )
    @device_option
    @json_option
    @handle_errors
    def bench_extract(data_dir, backbone, pretrained, batch_size, workers, limit, repeat, device, as_json):
        """End-to-end extraction images/s vs the encoder's bare forward images/s (same batch size)."""
        from cmm_cache.bench_extract import bench_extract as run

        r = run(
            data_dir,
            backbone,
            pretrained=pretrained,
            batch_size=batch_size,
            num_workers=workers,
            limit=limit,
            device=device,
            repeat=repeat,
            log=None if as_json else console.print,
        )
        if as_json:
            emit_json(r)
            return
        console.print(
            f"[bold]{r['images']} images[/], {r['backbone']} on {r['device']}, batch {r['batch_size']}, "
            f"{r['workers']} workers, {r['torch_threads']} torch threads"
        )
        console.print(
            f"  end-to-end (decode in workers + encode + write): {r['end_to_end_images_per_s']:.2f} images/s (median "
            f"of {r['repeat']})"
        )
        console.print(
            f"  bare forward (pre-decoded tensors):              {r['bare_forward_images_per_s']:.2f} images/s "
            f"(median of {r['repeat']})"
        )
        console.print(
            f"  ratio: {100 * r['ratio']:.1f} % (median of per-run ratios; best/best {100 * r['ratio_of_bests']:.1f} "
            "%; target >= 90 %)"
        )
