"""Writes that are complete or absent: a temporary sibling, then one rename.

Every file or folder another command will trust (a cache, a run folder, a
chunk of an unfinished extraction, the "last extract" record) is written
through these helpers, so a killed process never leaves a half-written file at
the final path. The temporary name carries the pid, so two writers never share
one, and it starts with the final name, so a stale one is easy to find
(``<final>.tmp-<pid>...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def tmp_sibling(final: str | os.PathLike, suffix: str = "") -> Path:
    """``<final>.tmp-<pid><suffix>`` in the same folder (a rename within one filesystem is atomic)."""
    final = Path(final)
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on any error it is removed.

    ``suffix`` keeps an extension some writers insist on (``np.savez`` adds ``.npz``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it takes the place of `final`.

    An existing `final` is moved aside first and removed only after the new
    folder is in place (``replace=False`` refuses instead: FileExistsError).
    Two renames, so there is an instant with no folder at `final` but never a
    half-filled one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
