"""Leaf helpers every stage may use: atomic writes, locks, private folders, output-path checks (:mod:`.outputs`),
where things live on disk, the device rule, versions, worker processes (:mod:`.parallel`), whether the compiled
stack imports (:mod:`.stack`).

May import: :mod:`cmm_cache.errors` (and the standard library, numpy, torch). Nothing else of cmm_cache.
"""
