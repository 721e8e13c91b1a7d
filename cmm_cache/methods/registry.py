"""The method registry: every module of :mod:`cmm_cache.methods` that declares a method is found by itself.

A method module calls :func:`register_method` at import time. The registry imports every module of the
package on first use (:func:`discover`), so adding a method is adding one file: no list to edit. Modules
that are not methods (the contract, this registry, the search helper) and the ``trainers`` package declare
nothing and are skipped. A module that fails to import raises its own error: a broken method is never
silently missing.
"""

from __future__ import annotations

import importlib
import pkgutil

from cmm_cache.errors import CmmError
from cmm_cache.methods.base import Method

METHODS: dict[str, Method] = {}
_NOT_METHODS = {"base", "registry", "search"}
_discovered = False


def register_method(method: Method) -> Method:
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"method '{method.name}' registered twice")
    METHODS[method.name] = method
    return method


def discover() -> dict[str, Method]:
    """Import every method module once and return the registry."""
    global _discovered
    if not _discovered:
        import cmm_cache.methods as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if not info.ispkg and info.name not in _NOT_METHODS:
                importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True
    return METHODS


def registered_methods() -> list[str]:
    """Every method name in display order (:attr:`Method.rank`, then name): simple baselines first, CMM last."""
    return [m.name for m in sorted(discover().values(), key=lambda m: (m.rank, m.name))]


def list_methods() -> list[str]:
    return sorted(discover())


def get_method(name: str) -> Method:
    methods = discover()
    if name not in methods:
        # `cross_modal_lp` means `cross-modal-lp`, as dataset names accept both spellings
        alt = str(name).replace("_", "-").lower()
        if alt in methods:
            return methods[alt]
        raise CmmError(f"Unknown method '{name}'.", f"Methods: {', '.join(sorted(methods))}.")
    return methods[name]
