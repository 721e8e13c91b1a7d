"""`cmm-cache datasets` and `cmm-cache backbones`: the registries (a rich table, or --json)."""

from __future__ import annotations

from pathlib import Path

import click
from cmm_cache.cli.common import (
    console,
    data_root_option,
    emit_json,
    handle_errors,
    json_option,
    not_written_json,
    report_not_written,
)


def _row(m: dict, root) -> dict:
    from cmm_cache.datasets.fewshot import parse_group
    from cmm_cache.datasets.manifests import SPLIT_SOURCES

    src = m["split_source"]
    groups = [parse_group(g) for g in (m.get("fewshot") or {}).get("groups", [])]
    present = None
    if root is not None and m.get("folder") and SPLIT_SOURCES[src["type"]].needs_data_root:
        present = (Path(root) / m["folder"]).is_dir()
    return {
        "name": m["name"],
        "aliases": m.get("aliases", []),
        "title": m.get("title", ""),
        "kind": m["kind"],
        "classes": len(m["classnames"]),
        "split_sizes": m.get("split_sizes", {}),
        "split_source": src["type"],
        "split_file_shipped": SPLIT_SOURCES[src["type"]].split_shipped,
        "split_file_needed": src.get("filename"),
        "fewshot_shots": sorted({k for k, _ in groups}),
        "fewshot_seeds": sorted({s for _, s in groups}),
        "templates": {k: len(v) for k, v in m["templates"].items()},
        "default_templates": m["default_templates"],
        "folder": m.get("folder"),
        "download": bool(m.get("download")),
        "homepage": (m.get("source") or {}).get("homepage"),
        "license": m.get("license"),
        "present": present,
    }


def _print_manifest(m: dict, root) -> None:
    r = _row(m, root)
    console.print(f"[bold]{m['name']}[/] — {m.get('title', '')}")
    console.print(f"aliases: {', '.join(m.get('aliases', [])) or '-'}")
    console.print(
        f"classes: {r['classes']}   split sizes: {r['split_sizes']}   split source: {r['split_source']}"
        + (f" (needs {r['split_file_needed']} in {m['folder']}/)" if r["split_file_needed"] else "")
    )
    console.print(
        f"few-shot published: shots {r['fewshot_shots'] or '-'} x seeds {r['fewshot_seeds'] or '-'} (others: "
        "seeded draw)"
    )
    console.print("templates: " + _templates(r["templates"], m["default_templates"]))
    if m.get("layout"):
        console.print("layout under the data root:\n" + m["layout"])
    src = m.get("source") or {}
    console.print(f"get it: {src.get('homepage', '-')}" + ("  (--download available)" if r["download"] else ""))
    if m.get("download_note"):
        console.print(m["download_note"])
    console.print(f"license: {m.get('license', '-')}")


def _templates(counts: dict, default: str) -> str:
    return ", ".join(f"{k} ({n})" + (" \\[default]" if k == default else "") for k, n in counts.items())


def _user_data(path: str) -> dict:
    """Your own folder / CSV loaded as `extract --dataset PATH` would, described (+ where its cache goes)."""
    from cmm_cache.datasets.names import dataset_key
    from cmm_cache.datasets.registry import load_dataset

    info = load_dataset(path).describe()
    info["cache_folder"] = dataset_key(path)
    return info


def _print_user_data(info: dict) -> None:
    from rich.table import Table

    splits = list(info["split_sizes"])
    console.print(f"[bold]{info['name']}[/] — your own data at {info['root']}")
    sizes = ", ".join(f"{s} {n}" for s, n in info["split_sizes"].items())
    console.print(f"classes: {info['num_classes']}   split sizes: {sizes}")
    console.print(f"split: {info['split']}")
    t = Table(title="images per class", show_lines=False)
    for col in ["class", *splits]:
        t.add_column(col, no_wrap=col == "class", justify="left" if col == "class" else "right")
    for c in info["classes"]:
        t.add_row(c["name"], *[str(c["images"][s]) for s in splits])
    console.print(t)
    console.print(
        f"few-shot: up to {info['max_shots']} shots per class (K train, min(K, 4) val images each); seeded draws"
    )
    console.print("templates: " + _templates(info["templates"], info["default_templates"]))
    console.print(
        f"cache folder: <cache-dir>/{info['cache_folder']}/; after extracting, --dataset {info['name']} "
        "finds it (or pass the same path again)"
    )
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


SPLITS = ("train", "val", "test")


def _members(ds, split: str) -> list[dict]:
    """The images of a split (or every split): path, class index and name, split; in split-list order."""
    rows = []
    for s in SPLITS if split == "all" else (split,):
        if s not in ds.splits:
            continue
        sl = ds.splits[s]
        for path, label in zip(sl.paths, sl.labels):
            rows.append({"split": s, "label": int(label), "class": ds.classnames[int(label)], "path": str(path)})
    return rows


def _write_members(rows: list[dict], path) -> None:
    import csv

    from cmm_cache.util.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "class", "split"])
        for r in rows:
            w.writerow([r["path"], r["label"], r["class"], r["split"]])


def _list_split(name: str, split: str, csv_path, data_root, as_json, show: bool = True) -> None:
    """`datasets NAME --list`: which images are in which split (your own data's seeded split included)."""
    from cmm_cache.datasets.registry import load_dataset
    from cmm_cache.errors import CmmError
    from cmm_cache.util.outputs import check_output_path, try_write

    if csv_path:
        csv_path = check_output_path(csv_path, "--csv")
    ds = load_dataset(name, data_root)
    if split != "all" and split not in ds.splits:
        raise CmmError(f"{ds.name} has no {split} split.", f"It has: {', '.join(ds.splits)}.")
    rows = _members(ds, split)
    failed = None
    if csv_path:
        _, failed = try_write("--csv", csv_path, lambda: _write_members(rows, csv_path))
    if as_json:
        out = {"dataset": ds.name, "split": split, "images": rows}
        emit_json({**out, **not_written_json([failed])})
    else:
        for r in rows if show else ():  # tab-separated as they are (rich would expand the tabs)
            click.echo(f"{r['split']}\t{r['class']}\t{r['path']}", err=True)
        which = "every split" if split == "all" else f"the {split} split"
        console.print(f"{len(rows)} images in {which} of {ds.name}", markup=False)
        if csv_path and not failed:
            console.print(f"wrote {len(rows)} rows to {csv_path} (a list `cmm-cache predict` takes)", markup=False)
    report_not_written([failed])


@click.command("datasets")
@click.argument("name", required=False)
@click.option(
    "--split",
    type=click.Choice([*SPLITS, "all"]),
    default=None,
    help="With NAME: the split to list (implies --list) [default with --list: all].",
)
@click.option(
    "--list",
    "list_images",
    is_flag=True,
    help="With NAME: print which images are in each split (split, class, path), e.g. to keep the training "
    "images out of what you predict on.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --list: also write path,label,class,split rows here (a list `predict` accepts).",
)
@data_root_option
@json_option
@handle_errors
def datasets_cmd(name, split, list_images, csv_path, data_root, as_json):
    """List the registered datasets, or show one: NAME (or alias), a manifest .json, or your own image
    folder / CSV (its classes, split sizes and how the split was made).

    \b
    Manifests in folders named by $CMM_DATASET_MANIFESTS (os.pathsep-separated)
    are registered too, next to the shipped ones.

    \b
    Also accepted wherever --dataset is: an image folder (one sub-folder
    per class, or train/ val/ test/ each holding class folders), a CSV
    (path,label[,split]) or a manifest .json path.

    \b
    cmm-cache datasets path/to/dtd10 --split test --list   # which images are test images
    cmm-cache datasets path/to/dtd10 --split test --csv test.csv   # then: cmm-cache predict --run ID test.csv
    """
    from cmm_cache.datasets import manifests as mf
    from cmm_cache.datasets.names import is_user_data
    from cmm_cache.util.paths import MANIFEST_SUFFIX
    from cmm_cache.util.paths import data_root as resolve_root

    root = resolve_root(data_root)
    if split or list_images or csv_path:
        if not name:
            from cmm_cache.errors import CmmError

            raise CmmError("--list/--split/--csv need a dataset: NAME or your folder / CSV.")
        return _list_split(name, split or "all", csv_path, data_root, as_json, show=list_images or not csv_path)
    if name and is_user_data(name) and not name.lower().endswith(MANIFEST_SUFFIX):
        info = _user_data(name)
        emit_json(info) if as_json else _print_user_data(info)
        return
    if name:
        # a user-written manifest (validated), or a registered name / alias
        m = mf.public(mf.load_manifest_file(name) if is_user_data(name) else mf.get_manifest(name))
        emit_json(m) if as_json else _print_manifest(m, root)
        return
    rows = [_row(mf.get_manifest(n), root) for n in mf.list_datasets()]
    if as_json:
        emit_json({"datasets": rows, "data_root": str(root) if root else None})
        return
    _print_table(rows, root)


def _sizes(s: dict) -> str:
    if "train" in s:
        return "/".join(str(s.get(k, "-")) for k in ("train", "val", "test"))
    if "train_pool" in s:
        return f"pool {s.get('train_pool')}/{s.get('val_pool')}, test {s.get('test')}"
    return f"test {s.get('test', '-')}"


def _print_table(rows: list[dict], root) -> None:
    from cmm_cache.cli.tables import title
    from rich.table import Table

    from cmm_cache.datasets.manifests import SPLIT_SOURCES

    t = Table(title=title("registered datasets" + (f" (data root {root})" if root else "")), show_lines=False)
    wide = console.width >= 140  # narrow terminals get the essential columns only, names never wrapped
    cols = ["name", "aliases", "kind", "classes", "train/val/test", "few-shot (published)", "templates"]
    cols = [*cols, "split file", "download"]
    if not wide:
        cols = ["name", "classes", "train/val/test", "few-shot (published)", "split file"]
    if root:
        cols.append("present")
    for col in cols:
        t.add_column(col, no_wrap=col in ("name", "classes"), overflow="fold")
    for r in rows:
        shots, seeds = ",".join(map(str, r["fewshot_shots"])), ",".join(map(str, r["fewshot_seeds"]))
        needed = r["split_file_needed"]
        cell = {
            "name": r["name"],
            "aliases": ", ".join(r["aliases"]),
            "kind": r["kind"],
            "classes": str(r["classes"]),
            "train/val/test": _sizes(r["split_sizes"]),
            "few-shot (published)": f"K {shots} x seeds {seeds}" if r["fewshot_shots"] else "-",
            "templates": ", ".join(f"{k}:{n}" for k, n in r["templates"].items()),
            "split file": f"[yellow]needs {needed}[/]" if needed else SPLIT_SOURCES[r["split_source"]].listing,
            "download": "yes" if r["download"] else "-",
            "present": "yes" if r["present"] else ("-" if r["present"] is None else "[red]no[/]"),
        }
        t.add_row(*[cell[c] for c in cols])
    console.print(t)
    console.print(
        "Also accepted as --dataset: an image folder, a CSV (path,label[,split]) or a manifest .json. "
        "`cmm-cache datasets NAME|PATH` shows one."
    )


@click.command("backbones")
@json_option
@handle_errors
def backbones_cmd(as_json):
    """List the registered backbone aliases (any open_clip MODEL/TAG works too)."""
    from cmm_cache.backbones.registry import list_backbones

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


@click.command("methods")
@json_option
@handle_errors
def methods_cmd(as_json):
    """List the registered methods: what each is, how it chooses its hyper-parameters, its source."""
    from cmm_cache.methods.registry import get_method, registered_methods

    rows = []
    for name in registered_methods():
        m = get_method(name)
        rows.append(
            {
                "name": m.name,
                "summary": m.summary,
                "selection": m.selection,
                "trained": m.trained,
                "train_views": m.views,
                "inputs": m.inputs,
                "options": sorted(m.defaults),
                "source": m.source,
            }
        )
    if as_json:
        emit_json({"methods": rows})
        return
    from rich.table import Table

    t = Table(title="methods (`fit --method NAME`, `compare --methods LIST`)")
    for col in ("name", "what it is", "hyper-parameters chosen on", "train views", "source"):
        t.add_column(col, overflow="fold")
    for r in rows:
        views = r["train_views"] + (" (block inputs)" if r["inputs"] == "block_inputs" else "")
        t.add_row(r["name"], r["summary"], r["selection"], views, r["source"])
    console.print(t)


COMMANDS = [datasets_cmd, backbones_cmd, methods_cmd]
