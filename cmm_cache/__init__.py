"""cmm-cache: few-shot CLIP classification with Cross-Modal Mapping on cached features.

Data flow (one module each): paths -> manifests -> datasets -> backbones ->
encode -> cache -> fewshot -> fit -> evaluate -> results.
"""

__version__ = "0.1.0"

from .errors import CmmError  # noqa: E402,F401
