"""The versions a result records (cmm-cache, torch, numpy, h5py, Python)."""

from __future__ import annotations

import platform

import numpy as np
import torch

from cmm_cache import __version__


def versions() -> dict:
    import h5py

    return {
        "cmm-cache": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }
