"""The HDF5 feature cache, schema ``cmm-cache/1`` (docs/cache-schema.md).

- :mod:`.schema`: node names, dtypes, shared helpers;
- :mod:`.reader`: :func:`open_cache` and the read-only :class:`Cache` every stage-two command uses;
- :mod:`.writer`: whole-file writes (:func:`write_cache`), the streaming end of ``extract``
  (:func:`assemble_cache`) and :func:`add_text_nodes`;
- :mod:`.partial` and :mod:`.lock`: the work folder that makes ``extract`` resumable, and its one-writer lock;
- :mod:`.info` and :mod:`.verify`: ``cache ls``, ``cache info``, ``cache verify``.
"""

from .info import cache_info, cache_summary, human_bytes, list_caches
from .lock import LOCK_SUFFIX, CacheLock, lock_path
from .partial import PARTIAL_SUFFIX, PartialStore, SplitPlan, partial_dir
from .reader import Cache, Split, open_cache, open_h5
from .schema import (
    DSET_KW,
    FEATURE_DTYPE,
    INDEX_DTYPE,
    SCHEMA,
    TEXT_DTYPE,
    per_template_node,
    provenance_sha256,
    string_array,
    text_node,
)
from .verify import verify_cache
from .writer import add_text_nodes, assemble_cache, remove_stale_tmp, write_cache

__all__ = [
    "DSET_KW",
    "FEATURE_DTYPE",
    "INDEX_DTYPE",
    "LOCK_SUFFIX",
    "PARTIAL_SUFFIX",
    "SCHEMA",
    "TEXT_DTYPE",
    "Cache",
    "CacheLock",
    "PartialStore",
    "Split",
    "SplitPlan",
    "add_text_nodes",
    "assemble_cache",
    "cache_info",
    "cache_summary",
    "human_bytes",
    "list_caches",
    "lock_path",
    "open_cache",
    "open_h5",
    "partial_dir",
    "per_template_node",
    "provenance_sha256",
    "remove_stale_tmp",
    "string_array",
    "text_node",
    "verify_cache",
    "write_cache",
]
