"""The work folder of an extraction in progress: what makes ``extract`` resumable.

``extract`` never writes the final file until everything is encoded::

    <final>.partial/            work folder, one per cache
        request.json            fingerprint of the request (dataset manifest, backbone + weights,
                                preprocessing, row lists) and the chunk size; another request refuses to mix
        text.npz                per-template text embeddings of every template set (written once)
        <split>.<chunk>.npz     features [m, V, d] float16 + ok flags + errors of one chunk of rows (+ the
                                block inputs [m, Vb, *shape] float16 with --finetune-blocks),
                                written to a temp name and renamed: a chunk file is complete or absent
    <final>.tmp-<pid>           the HDF5 file being assembled from the chunks (streamed, flat memory)
    <final>                     renamed into place only when complete; the work folder is then removed
    <final>.lock                held by the one writer while it runs (see :mod:`.lock`)

A killed run resumes by skipping the chunk files already present, with the
chunk size recorded in its work folder (so the batches, hence the numbers,
are those of an uninterrupted run).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmm_cache.cache.schema import FEATURE_DTYPE, TEXT_DTYPE
from cmm_cache.errors import CmmError
from cmm_cache.util.atomic import atomic_path, write_json

PARTIAL_SUFFIX = ".partial"
CHUNK_GLOB = "*.[0-9][0-9][0-9][0-9][0-9][0-9].npz"


def partial_dir(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(final.name + PARTIAL_SUFFIX)


@dataclass
class SplitPlan:
    """What one split of the cache holds: manifest rows, labels, views, chunking."""

    name: str
    rows: np.ndarray  # manifest rows, in cache order
    labels: np.ndarray
    views: list[str]
    chunk_rows: int
    block_views: int = 0  # how many of the first views also store their block inputs (0: none)

    @property
    def n(self) -> int:
        return int(len(self.rows))

    @property
    def num_chunks(self) -> int:
        return (self.n + self.chunk_rows - 1) // self.chunk_rows

    def chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min(self.n, (c + 1) * self.chunk_rows)


def _savez(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


class PartialStore:
    """The work folder of one extraction in progress (see the module docstring)."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.dir = partial_dir(self.final)

    # -- request
    def request(self) -> dict | None:
        try:
            return json.loads((self.dir / "request.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def start(self, request: dict, chunk_rows: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "request.json", {**request, "chunk_rows": int(chunk_rows)}, indent=1, sort_keys=True)

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    # -- chunks
    def chunk_path(self, split: str, chunk: int) -> Path:
        return self.dir / f"{split}.{chunk:06d}.npz"

    def has_chunk(self, split: str, chunk: int) -> bool:
        return self.chunk_path(split, chunk).is_file()

    def chunks_done(self) -> int:
        return len(list(self.dir.glob(CHUNK_GLOB)))

    def save_chunk(
        self, split: str, chunk: int, features: np.ndarray, ok: np.ndarray, errors: Sequence[str], blocks=None
    ) -> None:
        extra = {} if blocks is None else {"blocks": np.asarray(blocks, dtype=FEATURE_DTYPE)}
        _savez(
            self.chunk_path(split, chunk),
            features=np.asarray(features, dtype=FEATURE_DTYPE),
            ok=np.asarray(ok, dtype=bool),
            errors=np.asarray(json.dumps(list(errors))),
            **extra,
        )

    def load_blocks(self, split: str, chunk: int) -> np.ndarray:
        """The block inputs [m, Vb, *shape] of a chunk (written with --finetune-blocks)."""
        p = self.chunk_path(split, chunk)
        try:
            with np.load(p) as z:
                return z["blocks"]
        except Exception as e:
            p.unlink(missing_ok=True)
            raise CmmError(
                f"Chunk {p.name} of the unfinished extraction has no readable block inputs ({e}); it was removed.",
                "Run the same command again: the missing chunk is encoded again.",
            ) from e

    def load_chunk(self, split: str, chunk: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        p = self.chunk_path(split, chunk)
        try:
            with np.load(p, allow_pickle=False) as z:
                return z["features"], z["ok"], json.loads(str(z["errors"]))
        except Exception as e:
            p.unlink(missing_ok=True)
            raise CmmError(
                f"Chunk {p.name} of the unfinished extraction is unreadable ({e}); it was removed.",
                "Run the same command again: the missing chunk is encoded again.",
            ) from e

    def load_flags(self, split: str, chunk: int) -> tuple[np.ndarray, list[str]]:
        """The small part of a chunk: ok flags and errors (features not read)."""
        with np.load(self.chunk_path(split, chunk), allow_pickle=False) as z:
            return z["ok"], json.loads(str(z["errors"]))

    # -- text
    def save_text(self, text: Mapping[str, np.ndarray]) -> None:
        """Per-template raw text embeddings [C, M, d] of every template set."""
        _savez(
            self.dir / "text.npz",
            **{f"set_{i}": np.asarray(v, dtype=TEXT_DTYPE) for i, v in enumerate(text.values())},
            names=np.asarray(json.dumps(list(text.keys()))),
        )

    def load_text(self) -> dict[str, np.ndarray] | None:
        p = self.dir / "text.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                names = json.loads(str(z["names"]))
                return {n: z[f"set_{i}"] for i, n in enumerate(names)}
        except Exception:
            p.unlink(missing_ok=True)
            return None
