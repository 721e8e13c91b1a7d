"""cmm-cache: few-shot CLIP classification with Cross-Modal Mapping on cached features.

Data flow (one module each): paths -> manifests -> datasets -> backbones ->
encode -> cache -> fewshot -> fit -> heads -> methods -> evaluate -> results.
"""

__version__ = "0.1.0"

from ._source_tree import map_source_tree  # noqa: E402

map_source_tree(__file__)  # `python -m cmm_cache` from an uninstalled checkout

from .errors import CmmError  # noqa: E402,F401
