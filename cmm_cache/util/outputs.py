"""Output paths a command will write: checked before the work starts, and a write that fails after it reported.

:func:`check_output_path` is the one check every output option goes through (``export --out``, ``predict --csv``,
``results merge --csv``, ``compare --csv/--plot``, ``fit --out``): the path is not a folder (for a file), no part of
it is a file where a folder must be, and the folder that will receive it can be written to (tried, not guessed from
permission bits). Missing folders are fine: writers create them (:func:`cmm_cache.util.atomic.atomic_path`).

:func:`try_write` runs a write after the work is done: a failure (a full disk, a folder removed meanwhile) comes back
as a :class:`NotWritten` that the caller reports after printing the result, instead of a traceback that loses it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmm_cache.errors import CmmError


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(base: Path, what: str, path, kind: str) -> None:
    """Make and remove a file in `base`: the honest test that it can be written to."""
    if not base.is_dir():
        raise CmmError(
            f"{what} {path}: {base} is not a folder (a file is there), so nothing can be written under it.",
            f"Give a path whose folders are folders (or move the file {base} away).",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".cmm-cache-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CmmError(
            f"{what} {path}: {base} is not writable ({e.strerror or e}).",
            f"Choose a {kind} in a folder you can write to.",
        ) from None


def check_output_path(path, what: str, *, folder: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as a Path when `what` (e.g. ``"--csv"``) can be written there; else one clear :class:`CmmError`.

    `folder` says the output is a folder (a run folder) rather than a file. `suffixes` (e.g. ``(".png", ".svg")``)
    are the file types the writer knows. Nothing is left behind: a probe file is made and removed in the folder
    that would receive the output, so a read-only mount or a folder owned by someone else is found here.
    """
    kind = "folder" if folder else "file"
    if path is None or not str(path).strip():
        raise CmmError(f"{what}: an empty path.", f"Give the {kind} to write.")
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise CmmError(
            f"{what} {path}: cannot write a '{p.suffix or p.name}' file.",
            f"Give a file name ending in {' or '.join(suffixes)}.",
        )
    if folder and p.exists() and not p.is_dir():
        raise CmmError(f"{what} {path} is a file, not a folder.", "Give a folder (new, or one written by cmm-cache).")
    if not folder and p.is_dir():
        example = p / ("out" + "".join(suffixes[:1]))
        raise CmmError(f"{what} {path} is a folder.", f"Give a file name in it, e.g. {example}.")
    # Writers put a temporary sibling next to the output, then rename it; a folder output also receives files.
    _probe(_existing_ancestor(p.parent), what, path, kind)
    if folder and p.is_dir():
        _probe(p, what, path, kind)
    return p


@dataclass(frozen=True)
class NotWritten:
    """An output that could not be written after the work was done."""

    what: str
    path: str
    error: str

    def line(self) -> str:
        return f"not written: {self.what} {self.path} ({self.error})"

    def to_dict(self) -> dict:
        return {"what": self.what, "path": self.path, "error": self.error}


def try_write(what: str, path, write: Callable[[], object]) -> tuple[object, NotWritten | None]:
    """Run `write()`: (its value, None), or (None, :class:`NotWritten`) when the write failed (an OSError or a
    :class:`CmmError`), so the caller can still show the result and name what was not written."""
    try:
        return write(), None
    except OSError as e:
        return None, NotWritten(what, str(path), f"{type(e).__name__}: {e.strerror or e}")
    except CmmError as e:
        return None, NotWritten(what, str(path), e.message)
