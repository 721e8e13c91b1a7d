"""cmm-cache: few-shot CLIP classification with Cross-Modal Mapping on cached features.

Data flow (one module each): paths -> manifests -> datasets -> backbones ->
encode -> cache -> fewshot -> fit -> heads -> methods -> evaluate -> protocol ->
runs -> discovery -> scoring -> results; predict and export use a fitted run.

    clf = cmm_cache.load_classifier(run_dir)   # a fitted run as a classifier (lazy import)
"""

__version__ = "0.2.0"

from ._source_tree import map_source_tree  # noqa: E402

map_source_tree(__file__)  # `python -m cmm_cache` from an uninstalled checkout

from .errors import CmmError  # noqa: E402,F401


def __getattr__(name):
    # Lazy, so `import cmm_cache` stays light (no torch until a classifier is asked for).
    if name == "load_classifier":
        from .predict import load_classifier

        return load_classifier
    raise AttributeError(f"module 'cmm_cache' has no attribute {name!r}")
