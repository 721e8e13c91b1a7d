"""The one rule for ``--device``: auto, cpu, cuda, cuda:N (a CUDA device that is not there is a clear error)."""

from __future__ import annotations

from cmm_cache.errors import CmmError


def resolve_device(device: str | None = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CmmError(f"--device {device} was asked for but no CUDA GPU is available.", "Use --device cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise CmmError(f"Unknown device '{device}'.", "Use auto, cpu, cuda or cuda:N.")
    return device
