"""One writer per cache: an exclusive ``flock`` on ``<final>.lock``, held by the writing process only.

The mechanism (fork safety, the lock file removed by its holder, no lock on a removed file) is
:class:`cmm_cache.util.lock.FileLock`; a second writer of a cache is refused at once, since an extraction
may run for hours.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmm_cache.errors import CmmError
from cmm_cache.util.lock import FileLock

LOCK_SUFFIX = ".lock"


def lock_path(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(final.name + LOCK_SUFFIX)


class CacheLock(FileLock):
    """An exclusive OS-level lock on ``<final>.lock``: a second writer is refused at once with a clear message."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        super().__init__(lock_path(self.final), self._busy)

    def _busy(self, holder: str) -> CmmError:
        return CmmError(
            f"Another extraction is writing {self.final} right now" + (f" ({holder})." if holder else "."),
            f"Wait for it to finish (it holds {self.path}), or stop it; "
            "a second writer is refused so the cache cannot be corrupted.",
        )

    def __enter__(self) -> CacheLock:
        return self.acquire()
