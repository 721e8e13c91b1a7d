"""Writes that are complete or absent: a temporary sibling, then one rename.

Every file or folder another command will trust (a cache, a run folder, a
chunk of an unfinished extraction, the "last extract" record) is written
through these helpers, so a killed process never leaves a half-written file at
the final path. The temporary name carries the pid, so two writers never share
one, and it starts with the final name, so a stale one is easy to find
(``<final>.tmp-<pid>...``).

A write that fails (disk full, no permission, read-only file system) removes
its temporary file and raises :class:`WriteFailed`, a :class:`CmmError` that
names the path and the reason: the final path keeps what it held before.

**Folders** (:func:`atomic_dir`) are replaced with *one* atomic step where the
system has one: Linux ``renameat2(RENAME_EXCHANGE)`` (macOS ``renamex_np(RENAME_SWAP)``)
swaps the finished temporary folder and the old one, so a reader always finds
a complete folder at the final path and a writer killed at any instant leaves
either the old or the new folder there, never none. The old folder, now under
the hidden temporary name, is removed after the swap (and, if the writer was
killed first, by the next writer: :func:`remove_stale_dirs`). File systems
without an exchange (some network file systems) get two renames, old aside
then new in place; a writer killed between them leaves the old folder at its
hidden ``.old-`` name, which the next writer moves back first
(:func:`recover_dir`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from cmm_cache.errors import CmmError

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"

# Fault injection for tests: called with the name of each step of a folder replacement
# ("written", "before-swap", "swapped", "aside", "placed", "cleaned"); a test makes it kill the process.
fault_hook: Callable[[str], None] | None = None


def _fault(step: str) -> None:
    if fault_hook is not None:
        fault_hook(step)


# ----------------------------------------------------------------------------
# Write errors


# errno values that mean "this write cannot be done here", not a bug: one message, not a traceback.
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large for the file system",
    errno.EIO: "an input/output error",
    errno.ENAMETOOLONG: "the name is too long",
}


class WriteFailed(CmmError):
    """A write that could not be done (disk full, permission, read-only): nothing half-written was left."""

    def __init__(self, path, reason: str, hint: str | None = None):
        super().__init__(
            f"Could not write {path}: {reason}.",
            hint
            or "Nothing half-written was left there. Free space or fix the permissions (or write elsewhere), "
            "then run the same command again.",
        )
        self.path = str(path)
        self.reason = reason


def write_error_reason(e: BaseException) -> str | None:
    """Why `e` is a write that cannot be done here (disk full, permission, ...), or None when it is not one.

    HDF5 reports such errors as an OSError whose text carries the system's message, without an errno."""
    if isinstance(e, WriteFailed):
        return e.reason
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return f"{_WRITE_ERRNOS[e.errno]} ({e.strerror or e})"
    text = str(e)
    for code, what in _WRITE_ERRNOS.items():
        if f"errno = {code}," in text or os.strerror(code) in text:
            return f"{what} ({os.strerror(code)})"
    return None


def as_write_failed(path, e: BaseException, hint: str | None = None) -> BaseException:
    """`e` as a :class:`WriteFailed` for `path` when it is a write that cannot be done here, else `e` itself."""
    if isinstance(e, WriteFailed):
        return e
    reason = write_error_reason(e)
    return e if reason is None else WriteFailed(path, reason, hint)


@contextlib.contextmanager
def write_errors(path, hint: str | None = None) -> Iterator[None]:
    """Turn a disk-full / permission OSError raised inside the block into one :class:`WriteFailed` for `path`."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # h5py raises RuntimeError for some failed writes
        err = as_write_failed(path, e, hint)
        if err is e:
            raise
        raise err from e


# ----------------------------------------------------------------------------
# Files


def tmp_sibling(final: str | os.PathLike, suffix: str = "") -> Path:
    """``<final>.tmp-<pid><suffix>`` in the same folder (a rename within one filesystem is atomic)."""
    final = Path(final)
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}{suffix}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data and metadata to disk (folders: best effort where refused)."""
    is_dir = Path(path).is_dir()
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not is_dir or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike,
    suffix: str = "",
    fsync: bool = True,
    replace_guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on any error it is removed.

    ``suffix`` keeps an extension some writers insist on (``np.savez`` adds ``.npz``). A disk-full or
    permission error (in the block or in the rename) becomes one :class:`WriteFailed`. ``replace_guard()``
    is held around the rename (a cache waits there for the processes reading the old file).
    """
    final = Path(final)
    with write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final, suffix)
    try:
        with write_errors(final):
            yield tmp
            if fsync:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            with replace_guard() if replace_guard is not None else contextlib.nullcontext():
                os.replace(tmp, final)
            if fsync:
                fsync_path(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: str | os.PathLike, text: str) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return Path(final)


def write_json(final: str | os.PathLike, obj, **kw) -> Path:
    kw.setdefault("indent", 2)
    return write_text(final, json.dumps(obj, **kw) + "\n")


def write_synced(path: str | os.PathLike, data: bytes | Callable[[object], None]) -> None:
    """Write a new file (inside a temporary folder) and fsync it: `data` bytes, or a function of the open file."""
    with open(path, "wb") as fh:
        if callable(data):
            data(fh)
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# ----------------------------------------------------------------------------
# Folders


def tmp_dir_name(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")


def _old_dir_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}")


def stale_dirs(final: str | os.PathLike) -> list[Path]:
    """Hidden temporary and old folders of earlier writes of `final` (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    out = []
    for p in final.parent.iterdir():
        for mark in (TMP_MARK, OLD_MARK):
            if p.name.startswith(f".{final.name}{mark}") and p.name[len(final.name) + 1 + len(mark) :].isdigit():
                out.append(p)
    return sorted(out)


def recover_dir(final: str | os.PathLike) -> Path | None:
    """After a writer was killed between the two renames of the fallback: move the complete old folder back to
    `final` (call with the writers' lock held). Returns the folder moved back, or None."""
    final = Path(final)
    if final.exists():
        return None
    for p in stale_dirs(final):
        if OLD_MARK in p.name[len(final.name) + 1 :]:
            os.replace(p, final)
            fsync_path(final.parent)
            return p
    return None


def remove_stale_dirs(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary/old folders earlier writes of `final` left (call with the writers' lock held)."""
    gone = []
    for p in stale_dirs(final):
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    return gone


_NO_SWAP = object()
_swap_fn = None


def _load_swap():
    """The C function that swaps two paths atomically, or None where the system has none."""
    global _swap_fn
    if _swap_fn is None:
        fn = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
                f = libc.renameat2
                f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                f.restype = ctypes.c_int
                at_fdcwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
                fn = lambda a, b: f(at_fdcwd, a, at_fdcwd, b, exchange)  # noqa: E731
            elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
                f = libc.renamex_np
                f.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
                f.restype = ctypes.c_int
                fn = lambda a, b: f(a, b, 0x2)  # noqa: E731  RENAME_SWAP
        except (OSError, AttributeError):
            fn = None
        _swap_fn = fn or _NO_SWAP
    return None if _swap_fn is _NO_SWAP else _swap_fn


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step. False where the system or file system cannot
    (then nothing changed); an OSError for anything else."""
    if os.environ.get("CMM_CACHE_NO_EXCHANGE", "") not in ("", "0"):  # tests of the fallback
        return False
    fn = _load_swap()
    if fn is None:
        return False
    if fn(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _replace_dir(tmp: Path, final: Path, replace: bool) -> None:
    """Put the finished folder `tmp` at `final` (see the module docstring); the old folder goes away after."""
    _fault("before-swap")
    if not final.exists():
        os.rename(tmp, final)
        _fault("placed")
        fsync_path(final.parent)
        return
    if not replace:
        raise FileExistsError(final)
    if exchange(tmp, final):  # now `final` holds the new folder, `tmp` the old one
        _fault("swapped")
        fsync_path(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        _fault("cleaned")
        return
    old = _old_dir_name(final)
    os.replace(final, old)
    _fault("aside")
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # the old run goes back where it was
        raise
    _fault("placed")
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    _fault("cleaned")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it takes the place of `final` in one step.

    An existing `final` is swapped with the new folder (see the module docstring) and removed after;
    ``replace=False`` refuses instead (FileExistsError). The caller fsyncs the files it writes
    (:func:`write_synced`); the folders are synced here. Writers of one `final` must hold a lock
    (:mod:`cmm_cache.util.lock`): the temporary names carry the pid, not a random part.
    """
    final = Path(final)
    with write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    ok = False
    try:
        with write_errors(final):
            tmp.mkdir()
            yield tmp
            fsync_path(tmp)
            _fault("written")
            _replace_dir(tmp, final, replace)
            ok = True
    finally:
        if not ok or tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
