"""Leaf helpers every stage may use: atomic writes, output-path checks (``outputs``), where things live on disk,
the device rule, versions, whether the compiled stack imports (``stack``).

May import: :mod:`cmm_cache.errors` (and the standard library, numpy, torch). Nothing else of cmm_cache.
"""
