"""Stage 2 — CLIP backbones: the registry of names (a leaf), where weights come from, building the model,
and the one "same backbone" rule.

- :mod:`.registry`: aliases and name resolution (:class:`~.registry.BackboneSpec`), no weights loaded;
- :mod:`.weights`: finding, downloading (or refusing fast) and fingerprinting weights;
- :mod:`.load`: :func:`~.load.load_backbone` (model, transform, tokenizer, provenance);
- :mod:`.identity`: whether two provenance records describe the same encoder;
- ``configs/``: the registry and the open_clip configs shipped with cmm-cache (``tiny``).

May import: :mod:`cmm_cache.errors`, :mod:`cmm_cache.util`.
"""
