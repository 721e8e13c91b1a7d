"""`cmm-cache`: the click application. Each command lives in its own module."""

from __future__ import annotations

import click

from cmm_cache import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmm-cache")
def main():
    """Few-shot CLIP classification with Cross-Modal Mapping, on cached features.

    \b
    cmm-cache extract --dataset dtd --backbone rn50   # stage one: encode once
    cmm-cache fit --shots 4                           # stage two: train W and T
    cmm-cache eval --shift imagenet-sketch            # evaluate on a shift set
    cmm-cache predict --run RUN_DIR photos/           # classify your images
    """


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
