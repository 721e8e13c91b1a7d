"""cmm-cache: few-shot CLIP classification with Cross-Modal Mapping on cached features.

The package is one folder per stage, in data-flow order (docs/architecture.md)::

    datasets -> backbones -> extract -> cache -> methods -> runs -> evaluation / serving / analysis
                                                (heads: what a fitted run is at inference)

Public entry points::

    clf = cmm_cache.load_classifier(run_dir)   # a fitted run as a classifier (lazy import)
    cmm_cache.CmmError                          # every mistake a user can make
"""

__version__ = "0.3.0"

from .util.source_tree import map_source_tree  # noqa: E402

map_source_tree(__file__)  # `python -m cmm_cache` from an uninstalled checkout

from .errors import CmmError  # noqa: E402,F401


def __getattr__(name):
    # Lazy, so `import cmm_cache` stays light (no torch until a classifier is asked for).
    if name == "load_classifier":
        from .serving.predict import load_classifier

        return load_classifier
    raise AttributeError(f"module 'cmm_cache' has no attribute {name!r}")
