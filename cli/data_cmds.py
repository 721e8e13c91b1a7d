"""`cmm-cache datasets` and `cmm-cache backbones`: the registries (a rich table, or --json)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    console,
    data_root_option,
    emit_json,
    handle_errors,
    json_option,
)


def _row(m: dict, root) -> dict:

    src = m["split_source"]
    fs = m.get("fewshot") or {}
    groups = fs.get("groups", [])
    shots = sorted({int(g.split("_")[1].split("-")[0]) for g in groups})
    seeds = sorted({int(g.split("_")[2]) for g in groups})
    present = None
    if root is not None and m.get("folder") and src["type"] != "synthetic":
        present = (Path(root) / m["folder"]).is_dir()
    return {
        "name": m["name"],
        "aliases": m.get("aliases", []),
        "title": m.get("title", ""),
        "kind": m["kind"],
        "classes": len(m["classnames"]),
        "split_sizes": m.get("split_sizes", {}),
        "split_source": src["type"],
        "split_file_shipped": src["type"]
        in ("shipped", "synthetic", "class_folders", "imagenet", "fgvc_variant_files"),
        "split_file_needed": src.get("filename"),
        "fewshot_shots": shots,
        "fewshot_seeds": seeds,
        "templates": {k: len(v) for k, v in m["templates"].items()},
        "default_templates": m["default_templates"],
        "folder": m.get("folder"),
        "download": bool(m.get("download")),
        "homepage": (m.get("source") or {}).get("homepage"),
        "license": m.get("license"),
        "present": present,
    }


@click.command("datasets")
@click.argument("name", required=False)
@data_root_option
@json_option
@handle_errors
def datasets_cmd(name, data_root, as_json):
    """List the registered datasets, or show one manifest (NAME, alias or a manifest .json path).

    \b
    Manifests in folders named by $CMM_DATASET_MANIFESTS (os.pathsep-separated)
    are registered too, next to the shipped ones.

    \b
    Also accepted wherever --dataset is: an image folder (one sub-folder
    per class), a CSV (path,label[,split]) or a manifest .json path.
    """
    from cmm_cache import manifests as mf
    from cmm_cache.paths import data_root as resolve_root

    root = resolve_root(data_root)
    if name:
        from pathlib import Path

        if name.lower().endswith(".json") and Path(name).expanduser().is_file():
            m = mf.public(mf.load_manifest_file(name))  # a user-written manifest, validated
        else:
            m = mf.public(mf.get_manifest(name))
        if as_json:
            emit_json(m)
            return
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
        console.print(
            "templates: "
            + ", ".join(
                f"{k} ({n})" + (" \\[default]" if k == m["default_templates"] else "")
                for k, n in r["templates"].items()
            )
        )
        if m.get("layout"):
            console.print("layout under the data root:\n" + m["layout"])
        src = m.get("source") or {}
        console.print(f"get it: {src.get('homepage', '-')}" + ("  (--download available)" if r["download"] else ""))
        if m.get("download_note"):
            console.print(m["download_note"])
        console.print(f"license: {m.get('license', '-')}")
        return

    rows = [_row(mf.get_manifest(n), root) for n in mf.list_datasets()]
    if as_json:
        emit_json({"datasets": rows, "data_root": str(root) if root else None})
        return
    from rich.table import Table

    t = Table(title="registered datasets" + (f" (data root {root})" if root else ""), show_lines=False)
    wide = console.width >= 140  # narrow terminals get the essential columns only, names never wrapped
    cols = [
        "name",
        "aliases",
        "kind",
        "classes",
        "train/val/test",
        "few-shot (published)",
        "templates",
        "split file",
        "download",
    ]
    if not wide:
        cols = ["name", "classes", "train/val/test", "few-shot (published)", "split file"]
    if root:
        cols.append("present")
    for col in cols:
        t.add_column(col, no_wrap=col in ("name", "classes"), overflow="fold")
    for r in rows:
        s = r["split_sizes"]
        sizes = (
            "/".join(str(s.get(k, "-")) for k in ("train", "val", "test"))
            if "train" in s
            else (
                f"pool {s.get('train_pool')}/{s.get('val_pool')}, test {s.get('test')}"
                if "train_pool" in s
                else f"test {s.get('test', '-')}"
            )
        )
        fs = (
            f"K {','.join(map(str, r['fewshot_shots']))} x seeds {','.join(map(str, r['fewshot_seeds']))}"
            if r["fewshot_shots"]
            else "-"
        )
        split = {
            "shipped": "shipped",
            "class_folders": "listed from disk",
            "imagenet": "pool shipped + disk",
            "fgvc_variant_files": "official lists (archive)",
            "synthetic": "generated",
        }.get(r["split_source"], f"[yellow]needs {r['split_file_needed']}[/]")
        cell = {
            "name": r["name"],
            "aliases": ", ".join(r["aliases"]),
            "kind": r["kind"],
            "classes": str(r["classes"]),
            "train/val/test": sizes,
            "few-shot (published)": fs,
            "templates": ", ".join(f"{k}:{n}" for k, n in r["templates"].items()),
            "split file": split,
            "download": "yes" if r["download"] else "-",
            "present": "yes" if r["present"] else ("-" if r["present"] is None else "[red]no[/]"),
        }
        t.add_row(*[cell[c] for c in cols])
    console.print(t)
    console.print(
        "Also accepted as --dataset: an image folder, a CSV (path,label[,split]) or a manifest .json. "
        "`cmm-cache datasets NAME` shows one manifest."
    )


@click.command("backbones")
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


COMMANDS = [datasets_cmd, backbones_cmd]
