"""Benchmarks: the commands that measure speed (``cmm-cache bench ...``), and code only they use
(worker processes for side-by-side fits).

May import: anything in cmm_cache.
"""
