"""Shared pieces of the click application: options, output, error handling.

The CLI is thin: it parses, calls `cmm_cache`, prints. Human output goes to
stderr (rich); `--json` puts exactly one JSON object on stdout.
"""

from __future__ import annotations

import functools
import json
import sys

import click
from rich.console import Console

from cmm_cache.errors import CmmError

# Human-readable output always goes to stderr so stdout stays clean for --json.
console = Console(stderr=True, highlight=False)


def data_root_option(f):
    return click.option(
        "--data-root",
        envvar="CMM_DATA_ROOT",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder holding the datasets in the CoOp layout (env CMM_DATA_ROOT).",
    )(f)


def cache_dir_option(f):
    return click.option(
        "--cache-dir",
        envvar="CMM_CACHE_DIR",
        type=click.Path(file_okay=False),
        default=None,
        help="Where caches and runs live (env CMM_CACHE_DIR, else $XDG_CACHE_HOME/cmm-cache, else ~/.cache/cmm-cache).",
    )(f)


def device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto | cpu | cuda | cuda:N",
    )(f)


def json_option(f):
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object on stdout; human output goes to stderr."
    )(f)


def int_list(ctx, param, value):
    """Click callback: '1,2,4' -> [1, 2, 4] (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    try:
        out = [int(v) for v in str(value).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of integers, got '{value}'") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got '{value}'")
    return list(dict.fromkeys(out))  # `--shots 4,4` means one run, not two


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def handle_errors(f):
    """Turn a CmmError into one clear message on stderr and exit status 2.

    With --json, stdout also gets one JSON object ``{"error": ..., "hint": ...}``,
    so a script reading stdout always gets JSON back.
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            return f(*args, **kwargs)
        except CmmError as e:
            console.print(f"[bold red]error:[/] {e.message}")
            if e.hint:
                console.print(e.hint)
            if as_json:
                emit_json({"error": e.message, "hint": e.hint, "exit_code": 2})
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: nothing half-written is left; run the same command again to resume.")
            if as_json:
                emit_json({"error": "interrupted", "hint": "run the same command again to resume", "exit_code": 130})
            sys.exit(130)

    return wrapper
