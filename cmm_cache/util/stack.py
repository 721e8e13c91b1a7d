"""The compiled stack under cmm-cache (torch, torchvision, open_clip, h5py): does it import?

A torchvision built for another torch (``operator torchvision::nms does not exist``), a CUDA build without its
libraries, a half-installed h5py: each fails at the first import, deep inside a command, as a traceback.
:func:`check_stack` imports the packages a command needs, up front, and turns the first failure into one
:class:`CmmError` naming the package, the installed versions and the command that repairs the environment.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

from cmm_cache.errors import CmmError

# import name -> distribution name (what pip installs)
STACK = {"torch": "torch", "torchvision": "torchvision", "open_clip": "open_clip_torch", "h5py": "h5py"}
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, read from its metadata (nothing is imported)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _build(version: str | None) -> str:
    """The build a torch/torchvision version string names: ``cpu``, ``cu130`` ..., or ``default``."""
    if not version:
        return "missing"
    return version.partition("+")[2] or "default"


def _fix(name: str) -> str:
    env = f"(in the environment of {sys.executable})"
    if name in ("torch", "torchvision"):
        return (
            f"Install a matching torch and torchvision {env}: on a machine without a GPU\n"
            f"  pip install --force-reinstall torch torchvision --index-url {CPU_INDEX}\n"
            "with a GPU (CUDA)\n"
            "  pip install --force-reinstall torch torchvision\n"
            "then run the command again."
        )
    dist = STACK.get(name, name)
    return f"Reinstall it {env}: pip install --force-reinstall {dist}\nthen run the command again."


def check_stack(modules=tuple(STACK), importer=importlib.import_module) -> None:
    """Import `modules` (in order; a subset of :data:`STACK`); the first that fails raises one CmmError with the
    fix. torchvision failing while torch imports is reported as the torch/torchvision mismatch it nearly always
    is. `importer` is for tests."""
    for name in modules:
        try:
            importer(name)
        except Exception as e:  # ImportError, OSError (a missing .so), RuntimeError (torchvision's operators)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            why = f"{type(e).__name__}: {first}" if first else type(e).__name__
            versions = ", ".join(f"{d} {installed_version(d) or 'not installed'}" for d in STACK.values())
            torch_v, vision_v = installed_version("torch"), installed_version("torchvision")
            blame = name
            if name == "torchvision" or (name == "open_clip" and "torchvision" in str(e)):
                blame = "torchvision"  # open_clip imports torchvision: the same mismatch
                if torch_v and vision_v and _build(torch_v) != _build(vision_v):
                    why += (
                        f"; torch {torch_v} and torchvision {vision_v} are builds for different targets "
                        f"({_build(torch_v)} vs {_build(vision_v)})"
                    )
                elif torch_v and vision_v:
                    why += f"; the usual cause: torchvision {vision_v} was not built for torch {torch_v}"
            raise CmmError(
                f"The installed {blame} does not load ({why}). cmm-cache needs torch, torchvision, open_clip and "
                f"h5py to import; installed: {versions}.",
                _fix(blame),
            ) from None
