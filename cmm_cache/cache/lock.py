"""One writer per cache: an exclusive ``flock`` on ``<final>.lock``, held by the writing process only.

Three rules make the lock safe and tidy:

- *Only the process that took it holds it.* A flock belongs to the open file,
  which forked children share: DataLoader workers forked while the lock is held
  would keep a dead writer's lock alive for seconds (until their watchdog
  notices the parent is gone). Every fork closes the child's copy at once
  (``os.register_at_fork``), so when the writer dies the kernel frees the lock
  immediately and the next writer takes over.
- *The lock file does not outlive the lock.* The holder removes ``<final>.lock``
  while still holding it, then lets go.
- *Never a lock on a removed file.* A second writer may open the file just
  before the holder removes it and get the flock right after: it then holds a
  lock nobody else can see. After locking, the file descriptor must still be
  the file at the path (same inode), else the writer opens the path again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cmm_cache.errors import CmmError

LOCK_SUFFIX = ".lock"
_MAX_ATTEMPTS = 100  # each retry means another writer just let go: a handful at most in practice

_held: dict[int, CacheLock] = {}  # fd -> lock held by this process


def _drop_inherited_locks() -> None:
    for fd, lock in list(_held.items()):
        lock.fd = None
        try:
            os.close(fd)  # the parent's descriptor keeps the lock; this copy must not
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def lock_path(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(final.name + LOCK_SUFFIX)


class CacheLock:
    """An exclusive OS-level lock on ``<final>.lock``: a second writer is refused at once with a clear message."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.path = lock_path(self.final)
        self.fd: int | None = None

    def acquire(self) -> CacheLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_MAX_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if self._lock_fd(fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
                self.fd = fd
                _held[fd] = self
                return self
        raise CmmError(f"Could not lock {self.path}: other writers keep taking and releasing it.", "Try again.")

    def _lock_fd(self, fd: int) -> bool:
        """Lock `fd`: True when it is the live lock file, False (fd closed) when its holder removed it meanwhile.

        Raises :class:`CmmError` (fd closed) when another process holds the lock.
        """
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise CmmError(
                f"Another extraction is writing {self.final} right now" + (f" ({holder})." if holder else "."),
                f"Wait for it to finish (it holds {self.path}), or stop it; "
                "a second writer is refused so the cache cannot be corrupted.",
            ) from None
        try:
            st = os.stat(self.path)
            live = (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
        except FileNotFoundError:
            live = False
        if not live:
            os.close(fd)  # closing releases the flock on the removed file
        return live

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _held.pop(fd, None)
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module docstring
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
