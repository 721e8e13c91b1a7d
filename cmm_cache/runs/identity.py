"""What makes a run itself: its identity, its id, the resolved config and its key.

A run's **identity** is (dataset, backbone, cache content, method, config key, shots, seed):

- the *cache content* is :func:`cmm_cache.cache.schema.content_sha256` of the cache's provenance: weights,
  data manifest, preprocessing, few-shot plan and code version, not the time of extraction (re-extracting
  the same inputs keeps every run valid);
- the *config key* is the first 8 hex digits of the sha256 of the canonical JSON of the resolved config
  (the method, all its options, the template set), leaving out what does not change the numbers: seed and
  shots (part of the identity on their own), the device and the method's runtime options (e.g. ``threads``).

Two runs with the same identity are the same run: fitting it again is skipped (``--force`` refits), and a
folder holding any other identity is never written over without ``--force``. The **run id** is the first
10 hex digits of the sha256 of the identity: a short, stable name for ``--run`` and ``runs ls``.
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


IDENTITY_FIELDS = ("dataset", "backbone", "cache_content_sha256", "method", "config_key", "shots", "seed")
RUN_ID_LENGTH = 10


def run_identity(result: dict) -> dict:
    """The identity of a result (a dict with the :data:`IDENTITY_FIELDS`; see the module docstring)."""
    ident = {f: result.get(f) for f in IDENTITY_FIELDS}
    ident["method"] = ident["method"] or "cmm"
    ident["config_key"] = ident["config_key"] or result_config_key(result)
    ident["shots"], ident["seed"] = int(ident["shots"]), int(ident["seed"])
    return ident


def run_id(identity: dict) -> str:
    """The short id of a run identity (stable across machines and re-extractions of the same inputs)."""
    blob = json.dumps({f: identity.get(f) for f in IDENTITY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:RUN_ID_LENGTH]


def identity_differences(a: dict, b: dict) -> list[str]:
    """``["backbone: 'rn50' vs 'tiny'", ...]`` for the identity fields that differ (hashes cut to 12 digits)."""

    def show(f, v):
        return repr(v[:12] + "...") if f == "cache_content_sha256" and isinstance(v, str) else repr(v)

    names = {"cache_content_sha256": "cache content", "config_key": "config key"}
    return [
        f"{names.get(f, f)}: {show(f, a.get(f))} vs {show(f, b.get(f))}"
        for f in IDENTITY_FIELDS
        if a.get(f) != b.get(f)
    ]


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
