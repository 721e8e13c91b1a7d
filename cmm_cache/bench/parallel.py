"""`parallel_map` lives in :mod:`cmm_cache.util.parallel` (benchmark runs use it too); kept importable here."""

from cmm_cache.util.parallel import call, default_processes, parallel_map, usable_cores

__all__ = ["call", "default_processes", "parallel_map", "usable_cores"]
