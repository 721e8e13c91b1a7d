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
    """


@main.group()
def bench():
    """Benchmarks users can run: `bench extract`, `bench fit`."""


def _register() -> None:
    # Imported here so `cmm-cache --help` does not pay for torch until needed
    # by a command module that imports it at call time.
    from . import data_cmds, extract_cmds, fit_cmds

    for mod in (data_cmds, extract_cmds, fit_cmds):
        mod.register(main, bench)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
