"""Folders only this user can write: where cmm-cache keeps what it will load or trust later.

The compiled training loop (a shared library that is loaded into the process) and the record of the local
weights files this user extracted with live in folders that must be

- owned by the current user (effective uid),
- mode 0700 (no one else may read, write or enter),
- real folders, not symbolic links.

:func:`private_dir` creates such a folder (or checks the one there) and raises :class:`NotPrivate` with the
reason when the folder at that place fails a check; a caller then refuses to load from it.
:func:`open_private_file` opens a file inside one without following links and checks that the file, too,
belongs to the user and is writable by no one else; the check holds for the open descriptor, so a file
swapped after the check is never the one read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cmm_cache.util.paths import cache_dir


class NotPrivate(Exception):
    """The folder or file is not private to this user (args[0]: why, for a message)."""


def check_private_dir(path: str | os.PathLike) -> os.stat_result:
    """The folder's stat when it is this user's, mode 0700 and no link; :class:`NotPrivate` otherwise."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotPrivate(f"{path} does not exist") from None
    return _check_dir_stat(path, st)


def _check_dir_stat(path, st: os.stat_result) -> os.stat_result:
    if stat.S_ISLNK(st.st_mode):
        raise NotPrivate(f"{path} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f"{path} is not a folder")
    if st.st_uid != os.geteuid():
        raise NotPrivate(f"{path} belongs to another user (uid {st.st_uid}, you are {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise NotPrivate(f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}, must be 0700)")
    return st


def private_dir(name: str, root: str | os.PathLike | None = None, *, clear_if_open: bool = False) -> Path:
    """``<cache-dir>/<name>`` (or ``<root>/<name>``), created mode 0700 if absent; :class:`NotPrivate` (and
    nothing changed) when what is there is not this user's private folder. Never loosens or takes over a folder.

    ``clear_if_open``: a folder of this user's that is open to others (e.g. made by an older version with the
    default umask) is closed to mode 0700 and emptied of its files first: nothing written there while others
    could write is trusted. A folder of another user, or a link, is refused all the same.
    """
    base = Path(root) if root is not None else cache_dir()
    path = base / name
    try:
        base.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is cut by the umask; never wider than 0700
    except FileExistsError:
        pass
    except OSError as e:
        raise NotPrivate(f"cannot create {path} ({e.strerror or e})") from None
    try:
        check_private_dir(path)
    except NotPrivate:
        st = os.lstat(path)
        ours = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        if not (clear_if_open and ours and stat.S_IMODE(st.st_mode) & 0o077):
            raise
        try:
            os.chmod(path, 0o700, follow_symlinks=False)
            for child in os.listdir(path):
                p = path / child
                if p.is_symlink() or not p.is_dir():
                    p.unlink()
        except OSError as e:
            raise NotPrivate(f"{path} is open to other users and cannot be closed ({e.strerror or e})") from None
        check_private_dir(path)
    return path


def open_private_file(folder: str | os.PathLike, name: str) -> tuple[int, int]:
    """(folder fd, file fd) of `folder/name`, opened without following links, after checking the folder and
    the file: the folder private (:func:`check_private_dir`), the file a regular file of this user that no
    one else can write. :class:`NotPrivate` or FileNotFoundError otherwise. The caller closes both."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        dfd = os.open(folder, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotPrivate(f"{folder} is a symbolic link") from None
        raise
    try:
        _check_dir_stat(folder, os.fstat(dfd))
        try:
            ffd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotPrivate(f"{Path(folder) / name} is a symbolic link") from None
            raise
        st = os.fstat(ffd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"belongs to another user (uid {st.st_uid})"
        elif stat.S_IMODE(st.st_mode) & 0o022:
            why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        if why:
            os.close(ffd)
            raise NotPrivate(f"{Path(folder) / name} {why}")
        return dfd, ffd
    except BaseException:
        os.close(dfd)
        raise


def read_private_file(folder: str | os.PathLike, name: str) -> bytes:
    """The bytes of `folder/name` after the checks of :func:`open_private_file`."""
    dfd, ffd = open_private_file(folder, name)
    try:
        with os.fdopen(ffd, "rb") as fh:
            return fh.read()
    finally:
        os.close(dfd)
