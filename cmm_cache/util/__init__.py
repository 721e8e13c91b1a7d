"""Leaf helpers every stage may use: atomic writes, locks, private folders, where things live on disk, the device rule,
versions, worker processes (:mod:`.parallel`).

May import: :mod:`cmm_cache.errors` (and the standard library, numpy, torch). Nothing else of cmm_cache.
"""
