"""Reading a run folder: what a fitted run *is* at inference (its head, classes and encoder provenance).

A run folder is written by :mod:`cmm_cache.runs.store`; this module reads it without any training code, so
``eval``, ``predict`` and ``export`` work from the folder alone (no cache needed)::

    <run folder>/
        result.json      accuracies, chosen hyper-parameters, the resolved config and its key, versions
        weights.npz      the head's arrays (CMM: W unless no-map, T, T0), always T0
        classes.json     class names and WordNet ids of the run's class space
        provenance.json  the cache's provenance: which backbone, weights and preprocessing

Nothing in a run folder is trusted: every file is checked when it is read (:func:`result_problems` for the
fields of result.json that any command uses, the head's arrays and params against its kind's declaration,
class names against the number of prototypes, provenance types), and a malformed folder is one
:class:`CmmError` saying what is wrong. ``weights.npz`` is read with ``allow_pickle=False``. The four files
are read through one handle on the folder, so a run replaced meanwhile (atomically, by a concurrent save)
is read either wholly old or wholly new; a read that loses the race is done again.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.base import (
    INT,
    LIST,
    NUMBER,
    OBJECT,
    ArraySpec,
    Head,
    discover_heads,
    load_head,
    state_problems,
    value_problem,
)
from cmm_cache.heads.cmm import CMMHead, Model
from cmm_cache.util.atomic import recover_dir, stale_dirs
from cmm_cache.util.lock import FileLock

FILES = ("result.json", "classes.json", "provenance.json", "weights.npz")
_RETRIES = 200  # x _RETRY_S: how long a reader waits for a replacement in progress to finish
_RETRY_S = 0.005
DAMAGED_HINT = "Fit it again (`cmm-cache fit ... --force`), or pass --run with another run folder."


@dataclass
class Run:
    path: Path
    result: dict
    model: Model | None  # the CMM tensors (None for other methods)
    classnames: list[str]
    wnids: list[str] | None
    provenance: dict
    head: Head | None = None  # what scores features: use this
    T0: torch.Tensor | None = None  # the zero-shot text classifier of the run's cache

    @property
    def embed_dim(self) -> int:
        return int(self.T0.shape[1])


# ----------------------------------------------------------------------------
# The one table of result.json fields: what type each has wherever it is read

ACC = (NUMBER, None)
# field -> (allowed values, as heads.base.param_problem takes them)
RESULT_FIELDS: dict[str, tuple] = {
    "dataset": (str,),
    "backbone": (str,),
    "method": (str, None),
    "config_key": (str, None),
    "run_id": (str, None),
    "shots": (INT,),
    "seed": (INT,),
    "alpha": (NUMBER, None),
    "val_acc": ACC,
    "test_acc": ACC,
    "zero_shot_test_acc": ACC,
    "cmm_only_test_acc": ACC,
    "fit_seconds": (NUMBER, None),
    "iterations": (INT, None),
    "num_classes": (INT, None),
    "config": (OBJECT,),
    "hparams": (OBJECT, None),
    "head": (OBJECT,),
    "warnings": (LIST, None),
    "cache": (str, None),
    "cache_provenance_sha256": (str, None),
    "cache_content_sha256": (str, None),
}
ACC_FIELDS = ("val_acc", "test_acc", "zero_shot_test_acc", "cmm_only_test_acc")
# What reading a run for inference needs (eval, predict, export); `results merge` also needs test_acc, and a
# finished run that `fit`/`compare` skip (and print) its accuracies and fit time.
RUN_REQUIRED = ("dataset", "backbone", "shots", "seed")
FINISHED_REQUIRED = (*RUN_REQUIRED, "test_acc", "val_acc", "fit_seconds")


def result_problems(result, required=RUN_REQUIRED) -> list[str]:
    """What is wrong with a parsed result.json (empty: every field any command reads has its type)."""
    if not isinstance(result, dict):
        return [f"result.json holds {type(result).__name__}, not an object"]
    problems = []
    for name in required:
        if result.get(name) is None:
            problems.append(f"field '{name}' missing")
    for name, allowed in RESULT_FIELDS.items():
        if name in result and not (result[name] is None and name in required):  # (said missing above)
            why = value_problem(f"field '{name}'", result[name], allowed)
            if why:
                problems.append(why)
    for name in ACC_FIELDS:
        v = result.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and not 0 <= v <= 100:
            problems.append(f"field '{name}' is {v}, not a percentage")
    v = result.get("shots")
    if isinstance(v, int) and not isinstance(v, bool) and v < 1:
        problems.append(f"field 'shots' is {v}, expected at least 1")
    a = result.get("alpha")
    if isinstance(a, (int, float)) and not isinstance(a, bool) and a < 0:
        problems.append(f"field 'alpha' is {a}, expected >= 0")
    w = result.get("warnings")
    if isinstance(w, list) and not all(isinstance(x, str) for x in w):
        problems.append("field 'warnings' is not a list of strings")
    cfg = result.get("config")
    if isinstance(cfg, dict) and cfg.get("method") is not None and not isinstance(cfg.get("method"), str):
        problems.append("field 'config.method' is not a string")
    head = result.get("head")
    if isinstance(head, dict):
        if not isinstance(head.get("kind"), str):
            problems.append("field 'head.kind' missing or not a string")
        if not isinstance(head.get("params", {}), dict):
            problems.append("field 'head.params' is not an object")
    return problems


# ----------------------------------------------------------------------------
# Reading the files, consistently


class _Gone(Exception):
    """A file vanished mid-read (a concurrent replacement): read again."""


def _read_at(dfd: int, name: str) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
    except FileNotFoundError:
        raise _Gone(name) from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _read_folder(run_dir: Path, names=FILES) -> tuple[dict[str, bytes], int]:
    """The raw bytes of `names` in `run_dir`, all through one handle on the folder, and the folder's inode."""
    dfd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        ino = os.fstat(dfd).st_ino
        try:
            return {n: _read_at(dfd, n) for n in names}, ino
        except _Gone as e:
            e.ino = ino  # the folder it went from (replaced meanwhile if the path now holds another)
            raise
    finally:
        os.close(dfd)


RUN_LOCK_WAIT_S = 600.0  # a second writer of one run waits this long for the first (a save takes a moment)


def run_lock(run_dir: str | os.PathLike, wait: float | None = RUN_LOCK_WAIT_S) -> FileLock:
    """The lock of one run folder: ``.<name>.lock`` beside it. Writers of the same run take turns (the second
    waits for the first, up to `wait` seconds; None: refused at once); readers need it only to put back a run
    a killed save left aside (:func:`read_files`)."""
    run_dir = Path(run_dir)

    def busy(holder: str) -> CmmError:
        return CmmError(
            f"Another process has been writing the run at {run_dir} for {wait or 0:.0f} s"
            + (f" ({holder})." if holder else "."),
            "Wait for it to finish, or stop it; then run the same command again.",
        )

    return FileLock(run_dir.with_name(f".{run_dir.name}.lock"), busy, wait=wait)


def _replacing(run_dir: Path) -> bool:
    """A save of this run is in progress, or was killed mid-way (its temporary or old folder is there).

    A run left aside by a save killed between the two renames of the fallback (no atomic exchange on this
    file system) is moved back here when no writer holds the run's lock (best effort: a reader that may not
    write there waits and then says there is no run)."""
    try:
        stale = stale_dirs(run_dir)
    except OSError:
        return False
    if stale and not run_dir.exists():
        try:
            with run_lock(run_dir, wait=None):  # taken: no save is at work, so none will finish this one
                recover_dir(run_dir)
                return run_dir.exists()
        except CmmError:
            return True  # a writer holds the lock: it is between its renames, the run is back in a moment
        except OSError:
            pass  # this folder is not writable here: wait a moment all the same
    return bool(stale)


def _swapped(run_dir: Path, ino: int | None) -> bool:
    """The folder read from (inode `ino`) is no longer the one at the path: the run was replaced meanwhile."""
    try:
        return ino is not None and os.stat(run_dir).st_ino != ino
    except OSError:
        return False


def read_files(run_dir: str | os.PathLike, names=FILES) -> dict[str, bytes]:
    """The raw bytes of a run folder's files, read together; waits out a concurrent replacement of the run.

    :class:`CmmError` "No run at ..." when the folder holds no run (after such a wait)."""
    run_dir = Path(run_dir)
    for attempt in range(_RETRIES):
        try:
            return _read_folder(run_dir, names)[0]
        except (_Gone, FileNotFoundError) as e:
            if attempt + 1 < _RETRIES and (_swapped(run_dir, getattr(e, "ino", None)) or _replacing(run_dir)):
                time.sleep(_RETRY_S)
                continue
            if run_dir.is_dir() and (run_dir / "result.json").is_file():
                missing = e.args[0] if isinstance(e, _Gone) else "?"
                raise CmmError(f"The run at {run_dir} is incomplete ({missing} missing).", DAMAGED_HINT) from None
            raise CmmError(
                f"No run at {run_dir} (result.json missing).",
                "Fit one first with `cmm-cache fit`, or pass --run PATH to an existing run folder.",
            ) from None
        except NotADirectoryError:
            raise CmmError(f"{run_dir} is not a run folder.", "Pass --run with a folder written by `fit`.") from None
        except PermissionError as e:
            raise CmmError(f"Cannot read the run at {run_dir} ({e.strerror}).") from None
    raise CmmError(f"The run at {run_dir} kept being replaced while it was read.", "Try again.")  # pragma: no cover


def _json(run_dir: Path, name: str, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CmmError(f"The run at {run_dir} is damaged: {name} is not JSON ({e}).", DAMAGED_HINT) from None


def read_result(run_dir: str | os.PathLike, required=RUN_REQUIRED) -> dict:
    """A run folder's result.json, checked (:func:`result_problems`); :class:`CmmError` if missing or malformed."""
    run_dir = Path(run_dir)
    result = _json(run_dir, "result.json", read_files(run_dir, ("result.json",))["result.json"])
    problems = result_problems(result, required)
    if problems:
        raise CmmError(f"The run at {run_dir} is damaged: result.json {'; '.join(problems)}.", DAMAGED_HINT)
    return result


def _arrays(run_dir: Path, data: bytes) -> dict[str, np.ndarray]:
    import io
    import zipfile

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, AttributeError) as e:
        raise CmmError(f"The run at {run_dir} is damaged: weights.npz cannot be read ({e}).", DAMAGED_HINT) from None


def _classes(run_dir: Path, classes) -> tuple[list[str], list[str] | None]:
    names = classes.get("names") if isinstance(classes, dict) else None
    wnids = classes.get("wnids") if isinstance(classes, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CmmError(f"The run at {run_dir} is damaged: classes.json has no list of class names.", DAMAGED_HINT)
    if wnids is not None and (
        not isinstance(wnids, list) or len(wnids) != len(names) or not all(isinstance(w, str) for w in wnids)
    ):
        raise CmmError(
            f"The run at {run_dir} is damaged: classes.json's wnids do not match its {len(names)} class names.",
            DAMAGED_HINT,
        )
    return names, wnids


PROVENANCE_FIELDS = {
    "model": (str, None),
    "pretrained": (str, None),
    "weights_path": (str, None),
    "weights_sha256": (str, None),
    "embed_dim": (INT, None),
    "random_weights_seed": (INT, None),
}


def provenance_problems(prov) -> list[str]:
    """What is wrong with a provenance record's fields that commands read (empty: nothing)."""
    if not isinstance(prov, dict):
        return [f"provenance holds {type(prov).__name__}, not an object"]
    out = []
    for name, allowed in PROVENANCE_FIELDS.items():
        if name in prov:
            why = value_problem(f"'{name}'", prov[name], allowed)
            if why:
                out.append(why)
    sha = prov.get("weights_sha256")
    if isinstance(sha, str) and not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        out.append(f"'weights_sha256' is {sha!r}, not a sha256")
    return out


def load_run(run_dir: str | os.PathLike) -> Run:
    """A run folder as a :class:`Run`, every file checked (see the module docstring)."""
    run_dir = Path(run_dir)
    raw = read_files(run_dir)
    result = _json(run_dir, "result.json", raw["result.json"])
    problems = result_problems(result)
    if problems:
        raise CmmError(f"The run at {run_dir} is damaged: result.json {'; '.join(problems)}.", DAMAGED_HINT)
    names, wnids = _classes(run_dir, _json(run_dir, "classes.json", raw["classes.json"]))
    provenance = _json(run_dir, "provenance.json", raw["provenance.json"])
    problems = provenance_problems(provenance)
    if problems:
        raise CmmError(f"The run at {run_dir} is damaged: provenance.json {'; '.join(problems)}.", DAMAGED_HINT)
    arr = _arrays(run_dir, raw["weights.npz"])
    head = run_head(result, arr, classes=len(names), where=run_dir)
    T0 = torch.from_numpy(np.asarray(arr["T0"], dtype=np.float32))
    d = provenance.get("embed_dim")
    if isinstance(d, int) and d != T0.shape[1]:
        raise CmmError(
            f"The run at {run_dir} is damaged: its arrays are {T0.shape[1]}-d, its provenance says {d}-d.",
            DAMAGED_HINT,
        )
    model = head.model if isinstance(head, CMMHead) else None
    return Run(run_dir, result, model, names, wnids, provenance, head, T0)


class _RunArrays:
    """What every run keeps beside its head's arrays: the zero-shot classifier T0 [C, d] of its cache."""

    ARRAYS = {"T0": ArraySpec(("C", "d"))}
    PARAMS: dict = {}


def run_head(result: dict, arrays: dict, classes: int | None = None, where=None) -> Head:
    """The head a run folder describes (runs written before heads existed are CMM runs), checked against
    its kind's declaration, `classes` class names and the T0 every run keeps."""
    where = where or "this run"
    if "head" in result:
        kind, params = result["head"]["kind"], result["head"].get("params", {})
    else:  # a run written before heads existed: CMM, its choices in the config
        cfg = result.get("config") or {}
        kind = "cmm"
        params = {
            "alpha": result.get("alpha"),
            "fusion": cfg.get("fusion", "prob"),
            "normalize_T_in_s": bool(cfg.get("normalize_T_in_s", False)),
            "cmm_only": bool(cfg.get("cmm_only", False)),
        }
    heads = discover_heads()
    dims = {"C": classes} if classes is not None else {}
    problems = []
    if "T0" not in arrays:
        problems.append("array 'T0' missing")
    else:
        problems += state_problems(_RunArrays, {"T0": arrays["T0"]}, {}, dims)
    if kind in heads and not problems:
        problems += state_problems(heads[kind], arrays, params, {**dims, "d": int(np.asarray(arrays["T0"]).shape[1])})
    if problems:
        raise CmmError(
            f"The run at {where} is damaged: {'; '.join(dict.fromkeys(problems))}"
            + (f" ({classes} class names)." if classes is not None else "."),
            DAMAGED_HINT,
        )
    try:
        return load_head(kind, arrays, params)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:  # what a kind's own checks refuse
        raise CmmError(f"The run at {where} is incomplete or damaged ({e}).", DAMAGED_HINT) from None
