"""Running from a source checkout without installing (`python -m cmm_cache` at the repository root).

pyproject maps the repository's top-level `cli/` and `data_manifests/` folders
into the package (`cmm_cache.cli`, `cmm_cache.data_manifests`); an install
(wheel or editable) makes that mapping. Imported straight from the checkout,
it does not exist, so it is made here: each folder is registered as the
subpackage it installs as. Nothing happens when the subpackages resolve.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MAPPED = {"cli": "cmm_cache.cli", "data_manifests": "cmm_cache.data_manifests"}


def map_source_tree(package_file: str) -> None:
    repo = Path(package_file).resolve().parent.parent
    for folder, name in MAPPED.items():
        if name in sys.modules:
            continue
        try:
            if importlib.util.find_spec(name) is not None:
                continue
        except ModuleNotFoundError:
            pass
        init = repo / folder / "__init__.py"
        if not init.is_file():
            continue  # not a checkout either: the import error that follows is the honest one
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
