"""What makes a run itself: the resolved config, its key, and what it changes from the method's defaults.

A run's identity is (dataset, backbone, method, resolved config, shots, seed). The config key is the first
8 hex digits of the sha256 of the canonical JSON of the resolved config (the method, all its options, the
template set), leaving out what does not change the numbers: seed and shots (they are in the folder name),
the device and the method's runtime options (e.g. ``threads``).
"""

from __future__ import annotations

import hashlib
import json

from cmm_cache.methods.registry import METHODS, list_methods

# Never part of a run's identity: they are in the folder name, or change speed and not results.
NOT_IDENTITY = ("seed", "shots", "device")


def typed_options(options: dict, defaults: dict) -> dict:
    """Options with ints given for float defaults made floats, so `lr=1` and `lr=1.0` are one config."""
    out = dict(options)
    for k, v in options.items():
        d = defaults.get(k)
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def identity(config: dict, runtime_options=()) -> dict:
    """The part of a run's (flat) resolved config that decides its numbers."""
    drop = set(NOT_IDENTITY) | set(runtime_options)
    ident = {k: v for k, v in config.items() if k not in drop}
    ident.setdefault("method", "cmm")  # runs written before methods existed are CMM runs
    return ident


def config_key(config: dict, runtime_options=()) -> str:
    """8 hex digits of sha256 over the canonical JSON of :func:`identity`."""
    blob = json.dumps(identity(config, runtime_options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:8]


def _runtime_options(method: str) -> tuple:

    list_methods()  # fills the registry
    m = METHODS.get(method)
    return m.runtime_options if m is not None else ("threads",)


def result_config_key(result: dict) -> str | None:
    """A result's config key: recorded since run folders carry one, else computed from its config."""
    if result.get("config_key"):
        return str(result["config_key"])
    cfg = result.get("config")
    if not isinstance(cfg, dict):
        return None
    return config_key(cfg, _runtime_options(cfg.get("method") or result.get("method") or "cmm"))


def config_changes(result: dict) -> dict:
    """What a run's config sets away from its method's defaults (for messages and tables)."""

    list_methods()
    cfg = identity(result.get("config") or {}, _runtime_options(result.get("method") or "cmm"))
    m = METHODS.get(cfg.get("method", "cmm"))
    defaults = m.defaults if m is not None else {}
    return {k: v for k, v in cfg.items() if k not in ("method", "templates") and k in defaults and defaults[k] != v}
