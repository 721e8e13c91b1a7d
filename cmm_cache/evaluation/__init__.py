"""Stage 6 — scoring: accuracy (the one definition), chunked test evaluation, shift-set classes, and scoring a
saved run on a cache (``eval``).

Inference code: may import :mod:`cmm_cache.errors`, :mod:`~cmm_cache.util`, :mod:`~cmm_cache.datasets`,
:mod:`~cmm_cache.backbones` (the identity rule), :mod:`~cmm_cache.cache`, :mod:`~cmm_cache.heads` —
never training code.
"""
