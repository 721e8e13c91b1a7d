"""Shared pieces of the click application: options, output, error handling.

The CLI is thin: it parses, calls `cmm_cache`, prints. Human output goes to
stderr (rich); `--json` puts exactly one JSON object on stdout.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from cmm_cache.errors import CmmError

# In a log (stderr not a terminal) lines are as long as they are: rich wraps, cuts or ellipsizes nothing there,
# so numbers, method names and paths stay whole and copy-pasteable.
LOG_WIDTH = 100_000


class _Console(Console):
    """rich's console, as wide as any line when it does not write to a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(LOG_WIDTH, size.height)

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


# Human-readable output always goes to stderr so stdout stays clean for --json.
console = _Console(stderr=True, highlight=False)


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
        is_eager=True,  # known before --run is resolved, wherever it stands on the command line
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


def stack(*decorators):
    """Several click options as one decorator (applied in the order listed, as they read in --help)."""

    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def cache_options(what: str = "the cache extracted last"):
    """--cache FILE, or --dataset with --backbone: the cache a stage-two command reads (fit, compare)."""
    return stack(
        click.option(
            "--cache",
            "cache_file",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"Any cache file following schema cmm-cache/1 [default: {what}].",
        ),
        click.option(
            "--dataset",
            default=None,
            help="With --backbone: the cache of this dataset (a registered name, your data's short name or path) "
            "in the cache dir. With --cache it must name that cache's dataset.",
        ),
        click.option(
            "--backbone",
            default=None,
            help="With --dataset: the cache of this backbone (as given to `extract`, e.g. rn50) in the cache dir. "
            "With --cache it must name that cache's backbone.",
        ),
    )


def shots_seeds_options(f):
    """--shots K,K,... and --seeds S,S,... of the few-shot subsets to fit (fit, compare)."""
    return stack(
        click.option(
            "--shots",
            default=None,
            callback=int_list,
            help="Few-shot K list, e.g. 1,2,4,8,16 [default: every K in the cache].",
        ),
        click.option(
            "--seeds",
            "--seed",
            "seeds",
            default=None,
            callback=int_list,
            help="Seed list, e.g. 1,2,3 [default: every seed the cache holds for each K].",
        ),
    )(f)


def templates_option(f):
    return click.option(
        "--templates", default=None, help="Text template set in the cache [default: the cache's default]."
    )(f)


def runs_dir_option(f):
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False),
        default=None,
        is_eager=True,  # known before --run is resolved
        help="Root of run folders [default: <cache-dir>/runs]; a run goes to "
        "<root>/<dataset>/<backbone>/<method>-<config key>/shot_K-seed_S.",
    )(f)


def _resolve_run(ctx, param, value):
    """Click callback of --run: a run id (or a unique prefix of one), a run folder, or a folder holding exactly one
    run -> that run's folder (:func:`cmm_cache.runs.discovery.resolve_run`); anything else is a usage error that
    lists what there is."""
    if value is None:
        return None
    from cmm_cache.runs.discovery import resolve_run
    from cmm_cache.util import paths

    runs_dir = ctx.params.get("runs_dir")
    root = Path(runs_dir) if runs_dir else paths.runs_dir(ctx.params.get("cache_dir"))
    try:
        if isinstance(value, (tuple, list)):  # a repeatable --run: each one resolved the same way
            return tuple(resolve_run(v, root) for v in value)
        return resolve_run(value, root)
    except CmmError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


run_callback = _resolve_run  # for a command whose --run is its own option (e.g. repeatable): the same rule


def run_option(required: bool = True):
    """--run: a run id from `cmm-cache runs ls` (or a unique prefix), a run folder written by `fit`, or a folder
    holding exactly one run; the command receives the run's folder (predict, export, eval, ...)."""
    return click.option(
        "--run",
        "run_path",
        required=required,
        callback=_resolve_run,
        metavar="RUN",
        help="Run id (`cmm-cache runs ls`; a unique prefix will do) or run folder written by `fit`.",
    )


def pretrained_option(
    help: str = "The weights file the cache was extracted with (its sha256 is checked before it is loaded); "
    "needed when the run's local weights file is not among those you loaded before.",
):
    return click.option("--pretrained", type=click.Path(dir_okay=False), default=None, help=help)


def max_image_pixels_option(f):
    return click.option(
        "--max-image-pixels",
        default=None,
        type=click.IntRange(1),
        help="Refuse images larger than this many pixels (width × height) as unreadable "
        "[default: 67108864 = 8192 × 8192].",
    )(f)


def workers_option(help: str = "Decoding processes [default: as extract]."):
    return click.option("--workers", default=None, type=click.IntRange(0), help=help)


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


def not_written_json(failures) -> dict:
    """The --json fields for outputs that could not be written: ``not_written`` (each one) and, when any,
    ``error``/``exit_code`` as every failing command's JSON has them."""
    failures = [f for f in failures or () if f]
    out = {"not_written": [f.to_dict() for f in failures]}
    if failures:
        out.update(error="; ".join(f.line() for f in failures), exit_code=2)
    return out


def report_not_written(failures) -> None:
    """After a command showed its result: name each output that could not be written (one line each) and exit
    with status 2 if any; nothing when all were written."""
    failures = [f for f in failures or () if f]
    for f in failures:
        console.print("[bold red]error:[/] ", end="")
        console.print(f.line(), markup=False, highlight=False, soft_wrap=True)
    if failures:
        sys.exit(2)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


class _ConsoleWarnings(logging.Handler):
    """The library's warnings (logger ``cmm_cache``, e.g. the compiled training loop cannot be used) as one
    ``warning:`` line each on the console (stderr), their text shown as written (no rich markup)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(f"[yellow]warning[/]: {escape(record.getMessage())}")
        except Exception:  # pragma: no cover - a warning must never break a command
            self.handleError(record)


_warnings_handler = _ConsoleWarnings(logging.WARNING)


def show_library_warnings() -> None:
    """Route the library's warnings to the console, once per process."""
    lib = logging.getLogger("cmm_cache")
    if _warnings_handler not in lib.handlers:
        lib.addHandler(_warnings_handler)  # (with a handler here, logging's last-resort printer stays silent)


def handle_errors(f):
    """Turn a CmmError into one clear message on stderr and exit status 2.

    With --json, stdout also gets one JSON object ``{"error": ..., "hint": ...}``,
    so a script reading stdout always gets JSON back. Messages are printed as
    written: a path or a name holding ``[...]`` is never read as rich markup.
    The library's warnings are shown on stderr (:func:`show_library_warnings`).
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        show_library_warnings()
        try:
            return f(*args, **kwargs)
        except CmmError as e:
            console.print(f"[bold red]error:[/] {escape(e.message)}")
            if e.hint:
                console.print(escape(e.hint))
            if as_json:
                emit_json({"error": e.message, "hint": e.hint, "exit_code": 2})
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: nothing half-written is left; run the same command again to resume.")
            if as_json:
                emit_json({"error": "interrupted", "hint": "run the same command again to resume", "exit_code": 130})
            sys.exit(130)

    return wrapper
