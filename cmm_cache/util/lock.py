"""One holder at a time: an exclusive ``flock`` on a lock file, held by the locking process only.

Used for one writer per cache (:mod:`cmm_cache.cache.lock`, refused at once) and one writer per run folder
(:mod:`cmm_cache.runs.store`, the second waits). Three rules make the lock safe and tidy:

- *Only the process that took it holds it.* A flock belongs to the open file,
  which forked children share: DataLoader workers forked while the lock is held
  would keep a dead writer's lock alive for seconds (until their watchdog
  notices the parent is gone). Every fork closes the child's copy at once
  (``os.register_at_fork``), so when the writer dies the kernel frees the lock
  immediately and the next writer takes over.
- *The lock file does not outlive the lock.* The holder removes the lock file
  while still holding it, then lets go.
- *Never a lock on a removed file.* A second writer may open the file just
  before the holder removes it and get the flock right after: it then holds a
  lock nobody else can see. After locking, the file descriptor must still be
  the file at the path (same inode), else the writer opens the path again.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from cmm_cache.errors import CmmError

_MAX_ATTEMPTS = 100  # each retry means another writer just let go: a handful at most in practice
_POLL_S = 0.002

_held: dict[int, FileLock] = {}  # fd -> lock held by this process


def _drop_inherited_locks() -> None:
    for fd, lock in list(_held.items()):
        lock.fd = None
        try:
            os.close(fd)  # the parent's descriptor keeps the lock; this copy must not
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class FileLock:
    """An exclusive OS-level lock on the file `path`.

    ``wait=None``: a second holder is refused at once with ``busy(holder)`` (a :class:`CmmError`);
    ``wait=S``: it waits up to S seconds for the first to let go, then is refused the same way.
    """

    def __init__(self, path: str | os.PathLike, busy: Callable[[str], CmmError], wait: float | None = None):
        self.path = Path(path)
        self.busy = busy
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if self.wait is None else time.monotonic() + float(self.wait)
        attempts = 0
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            got = self._lock_fd(fd, deadline)
            if got:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
                self.fd = fd
                _held[fd] = self
                return self
            # The holder let go (and removed the file) just as we locked it. A waiting writer keeps trying until
            # its deadline (a fixed number of tries starved it behind a writer saving in a loop); between tries a
            # short random pause lets the other writer finish its turn instead of winning every race.
            attempts += 1
            if deadline is None and attempts >= _MAX_ATTEMPTS:
                raise CmmError(f"Could not lock {self.path}: other writers keep taking and releasing it.", "Try again.")
            if deadline is not None and time.monotonic() >= deadline:
                raise self.busy("")
            time.sleep(random.uniform(0, _POLL_S * min(attempts, 10)))

    def _lock_fd(self, fd: int, deadline: float | None = None) -> bool:
        """Lock `fd`: True when it is the live lock file, False (fd closed) when its holder removed it meanwhile.

        Raises the `busy` error (fd closed) when another process holds the lock (past `deadline`, if any).
        """
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if deadline is not None and time.monotonic() < deadline:
                    time.sleep(_POLL_S)
                    continue
                try:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                except OSError:
                    holder = ""
                os.close(fd)
                raise self.busy(holder) from None
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

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
