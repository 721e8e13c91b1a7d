"""One writer per cache: an exclusive ``flock`` on ``<final>.lock``, held by the writing process only.

The mechanism (fork safety, the lock file removed by its holder, no lock on a removed file) is
:class:`cmm_cache.util.lock.FileLock`; a second writer of a cache is refused at once, since an extraction
may run for hours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
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


# ----------------------------------------------------------------------------
# Readers and the writer that replaces a cache file
#
# A reader (:class:`cmm_cache.cache.reader.Cache`) holds a shared ``flock`` on the cache file itself (no lock
# file: a cache may sit in a folder the reader cannot write) for as long as it reads it. A writer that replaces
# the file takes an exclusive ``flock`` on the old file for the instant of the rename: it waits for readers in
# other processes (or, asked before any work, is refused). A reader of this very process needs no waiting for:
# its open handle keeps reading the old file, whatever is renamed over its path.

log = logging.getLogger("cmm_cache.cache")
_readers: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> open reader handles of this process
_reader_fds: set[int] = set()
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EINVAL)


def _close_reader_fds_in_child() -> None:
    for fd in list(_reader_fds):
        try:
            os.close(fd)  # the parent's descriptor keeps its shared lock; a forked child must not
        except OSError:
            pass
    _reader_fds.clear()
    _readers.clear()


os.register_at_fork(after_in_child=_close_reader_fds_in_child)


def reader_lock(fd: int) -> None:
    """Take a shared lock on an open cache file (waits out a writer's rename; file systems without flock:
    nothing to coordinate with) and count the reader."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
    st = os.fstat(fd)
    _readers[(st.st_dev, st.st_ino)] = _readers.get((st.st_dev, st.st_ino), 0) + 1
    _reader_fds.add(fd)


def reader_unlock(fd: int) -> None:
    """Let go of a reader's lock (closing `fd`). A descriptor this process does not hold as a reader's (a
    forked child's copy, closed at the fork) is left alone: its number may belong to another file by now."""
    if fd not in _reader_fds:
        return
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if _readers.get(key, 0) > 1:
            _readers[key] -= 1
        else:
            _readers.pop(key, None)
    except OSError:
        pass
    _reader_fds.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def _busy_reading(final: Path) -> CmmError:
    return CmmError(
        f"{final} is being read by another process (a fit, compare, eval or a Python session) right now.",
        "Wait for it to finish, then run the same command again; a cache is never replaced under a reader. "
        "Or write the new cache elsewhere with --out PATH.",
    )


@contextlib.contextmanager
def no_readers(final: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file now at `final` (if any) while it is replaced: waits for the
    processes reading it (``wait``), or raises a :class:`CmmError` at once when one is (not ``wait``)."""
    final = Path(final)
    try:
        fd = os.open(final, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, IsADirectoryError):
        yield
        return
    try:
        st = os.fstat(fd)
        if not _readers.get((st.st_dev, st.st_ino)):  # this process's own readers keep the old file open
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise _busy_reading(final) from None
                log.warning("Waiting for the processes reading %s to finish before replacing it.", final)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
        yield
    finally:
        os.close(fd)


def check_not_read(final: str | os.PathLike) -> None:
    """Refuse at once (a :class:`CmmError`) when another process reads the cache at `final` (before a
    `--force` extraction starts work it could not put in place)."""
    with no_readers(final, wait=False):
        pass
