"""`cmm-cache`: the click application. Each command lives in its own module."""

from __future__ import annotations

import click

from cmm_cache import __version__

# What each command imports of the compiled stack (checked before it runs, see _check_stack); commands not
# listed need torch and h5py.
NEEDS = {
    "datasets": (),
    "backbones": (),
    "extract": ("torch", "torchvision", "open_clip", "h5py"),
    "predict": ("torch", "torchvision", "open_clip", "h5py"),
    "export": ("torch", "torchvision", "open_clip", "h5py"),
    "bench": ("torch", "torchvision", "open_clip", "h5py"),
}
DEFAULT_NEEDS = ("torch", "h5py")
HELP = ("-h", "--help")


class _Main(click.Group):
    """The group; it keeps the sub-command's arguments for the check before the command runs."""

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["cmm_cache.args"] = list(rest)
        return name, cmd, rest


@click.group(cls=_Main, context_settings={"help_option_names": list(HELP)})
@click.version_option(__version__, prog_name="cmm-cache")
@click.pass_context
def main(ctx):
    """Few-shot CLIP classification with Cross-Modal Mapping, on cached features.

    \b
    cmm-cache extract --dataset dtd --backbone rn50   # stage one: encode once
    cmm-cache fit --shots 4                           # stage two: train W and T
    cmm-cache eval --shift imagenet-sketch            # evaluate on a shift set
    cmm-cache predict --run RUN_DIR photos/           # classify your images
    """
    _check_stack(ctx)


def _check_stack(ctx: click.Context) -> None:
    """Before a command runs: the compiled packages it needs import, or one message saying how to repair the
    environment (a torch/torchvision mismatch, a broken install) instead of a traceback. Help needs nothing."""
    args = ctx.meta.get("cmm_cache.args", [])
    if ctx.resilient_parsing or any(a in HELP for a in args) or ctx.invoked_subcommand is None:
        return
    needs = NEEDS.get(ctx.invoked_subcommand, DEFAULT_NEEDS)
    if not needs:
        return
    from cmm_cache.cli.common import handle_errors

    from cmm_cache.util.stack import check_stack

    handle_errors(lambda as_json: check_stack(needs))(as_json="--json" in args)


@main.group()
def bench():
    """Benchmarks users can run: `bench extract`, `bench fit`, `bench methods`, `bench compare`."""


def _register() -> None:
    # Command modules import torch and the library inside each command, so
    # `cmm-cache --help` stays fast.
    from cmm_cache.cli import (
        bench_cmds,
        benchmark_cmds,
        cache_cmds,
        compare_cmds,
        data_cmds,
        eval_cmds,
        export_cmds,
        extract_cmds,
        fit_cmds,
        gap_cmds,
        predict_cmds,
        results_cmds,
        runs_cmds,
    )

    mods = (
        data_cmds,
        extract_cmds,
        cache_cmds,
        fit_cmds,
        eval_cmds,
        predict_cmds,
        export_cmds,
        results_cmds,
        runs_cmds,
        compare_cmds,
        benchmark_cmds,
        gap_cmds,
        bench_cmds,
    )
    for mod in mods:
        for cmd in mod.COMMANDS:
            main.add_command(cmd)
        for cmd in getattr(mod, "BENCH_COMMANDS", []):
            bench.add_command(cmd)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
