"""`cmm-cache cache ls|info|verify`: inspect caches."""

from __future__ import annotations

import sys

import click
from cmm_cache.cli.common import cache_dir_option, console, emit_json, handle_errors, json_option
from rich.markup import escape


def _resolve_path(path, dataset, backbone, cache_dir):
    from cmm_cache.cache.locate import cache_path, last_extract
    from cmm_cache.errors import CmmError

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


@click.group("cache")
def cache_group():
    """Inspect caches: ls, info, verify."""


@cache_group.command("ls")
@cache_dir_option
@json_option
@handle_errors
def cache_ls(cache_dir, as_json):
    """Table of the caches in the cache dir (and unfinished extractions)."""
    from cmm_cache.cache.info import list_caches
    from cmm_cache.util.paths import cache_dir as resolve_cache_dir

    rows = list_caches(cache_dir)
    root = str(resolve_cache_dir(cache_dir))
    if as_json:
        emit_json({"cache_dir": root, "caches": rows})
        return
    if not rows:
        console.print(f"No caches in {root}. Run `cmm-cache extract --dataset NAME --backbone NAME`.")
        return
    from cmm_cache.cli.tables import title
    from rich.table import Table

    t = Table(title=title(f"caches in {root}"))
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
            t.add_row(escape(r["path"]), "", "", f"[red]{escape(r['error'])}[/]", r["size"], "")
        else:
            splits = " ".join(f"{k}:{v}" for k, v in r["splits"].items())
            t.add_row(r["dataset"], r["backbone"], str(r["classes"]), splits, r["size"], str(r.get("created") or ""))
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

    from cmm_cache.cache.info import cache_info

    info = cache_info(_resolve_path(path, dataset, backbone, cache_dir))
    if as_json:
        emit_json(info)
        return
    console.print(f"[bold]{info['path']}[/] ({info['size_bytes']} bytes)")
    for k, v in info["attrs"].items():
        console.print(f"  {k}: {v}")
    console.print("  provenance: " + _json.dumps(info["provenance"], indent=2, sort_keys=True).replace("\n", "\n  "))
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
    from cmm_cache.cache.info import list_caches
    from cmm_cache.cache.verify import verify_cache

    if all_:
        paths = [r["path"] for r in list_caches(cache_dir) if not r.get("unfinished")]
    else:
        paths = [_resolve_path(path, dataset, backbone, cache_dir)]
    from cmm_cache.cli.progress import Heartbeat
    from cmm_cache.cli.progress import sink as progress_sink

    log, report = progress_sink(), {}
    with Heartbeat(log):
        for p in paths:  # reading every byte of a large cache takes a while: the heartbeat names which
            log.set_status(f"cache verify {p}")
            report[p] = verify_cache(p)
    bad = {p: v for p, v in report.items() if v}
    if as_json:
        emit_json({"ok": not bad, "caches": [{"path": p, "ok": not v, "problems": v} for p, v in report.items()]})
    else:
        for p, v in report.items():
            if v:
                console.print(f"[bold red]damaged[/]: {escape(p)}")
                for msg in v:
                    console.print(f"  - {msg}", markup=False)
            else:
                console.print(f"[green]ok[/]: {escape(p)}")
        if bad:
            console.print("Re-extract a damaged cache with `cmm-cache extract --dataset NAME --backbone NAME --force`.")
    if bad:
        sys.exit(1)


COMMANDS = [cache_group]
