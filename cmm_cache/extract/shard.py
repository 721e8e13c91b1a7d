"""This process's share of an extraction: encode the chunks it owns that are not on disk yet.

Rows are grouped in chunks (:class:`cmm_cache.cache.partial.SplitPlan`); under
torchrun the chunks are dealt round-robin to the ranks. A chunk is written to
the work folder as soon as its last row is encoded, so a killed run loses at
most the chunks in flight. Batches never straddle two chunks, so a resumed run
encodes the same batches (hence the same numbers) as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmm_cache.cache.partial import PartialStore, SplitPlan
from cmm_cache.errors import CmmError
from cmm_cache.extract.distributed import DistContext
from cmm_cache.extract.encode import ImageItem, ViewRecipe, iter_encoded

ProgressFn = Callable[[int, int], None]  # (images done, images total) of this process's share


@dataclass(frozen=True)
class ChunkWritten:
    """Passed to an ``on_chunk`` observer each time a chunk file is complete on disk."""

    split: str
    chunk: int
    rows: int
    written: int  # chunk files this process has written so far in this call
    path: Path


ChunkFn = Callable[[ChunkWritten], None]


@dataclass
class _Work:
    """The images still to encode, in batches, and where each lands (plan, chunk, row in chunk)."""

    items: list[ImageItem] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    where: list[tuple[int, int, int]] = field(default_factory=list)
    chunk_sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    total: int = 0
    resumed: int = 0


def _collect(ds, plans: Sequence[SplitPlan], store: PartialStore, dist: DistContext, batch_size: int) -> _Work:
    w = _Work()
    for pi, p in enumerate(plans):
        V = len(p.views)
        per_batch = max(1, int(batch_size) // V)  # a batch holds about batch_size images, views included
        paths = ds.splits[p.name].paths
        for c in range(p.num_chunks):
            if not dist.owns_chunk(c):
                continue
            a, b = p.chunk_range(c)
            w.total += b - a
            if store.has_chunk(p.name, c):
                w.resumed += b - a
                continue
            w.chunk_sizes[(pi, c)] = b - a
            start = len(w.items)
            for j, r in enumerate(range(a, b)):
                row = int(p.rows[r])
                w.items.append(
                    ImageItem(key=len(w.items), path=str(paths[row]), views=tuple(p.views), row=row,
                              block_views=p.block_views)
                )  # fmt: skip
                w.where.append((pi, c, j))
            w.batches += [
                list(range(s, min(len(w.items), s + per_batch))) for s in range(start, len(w.items), per_batch)
            ]
    return w


class _ChunkBuffer:
    def __init__(self, rows: int, views: int, dim: int, block_views: int = 0, block_shape: tuple = ()):
        self.features = np.zeros((rows, views, dim), np.float16)
        self.blocks = np.zeros((rows, block_views, *block_shape), np.float16) if block_views else None
        self.ok = np.zeros(rows, bool)
        self.errors: list[str | None] = [None] * rows
        self.filled = 0


def _bad_image(path: str, err: str) -> CmmError:
    return CmmError(
        f"Cannot read image {path} ({err}).",
        "Fix or remove the file, or pass --skip-bad to leave it out (it is then listed in the cache's "
        "provenance). Chunks already encoded are kept: the same command resumes.",
    )


def encode_share(
    ds,
    bb,
    plans: Sequence[SplitPlan],
    store: PartialStore,
    dist: DistContext,
    *,
    batch_size: int,
    num_workers: int,
    skip_bad: bool = False,
    progress: ProgressFn | None = None,
    on_chunk: ChunkFn | None = None,
    max_image_pixels: int | None = None,
    recipe: ViewRecipe | None = None,
    cut=None,
) -> tuple[int, int]:
    """Encode this rank's chunks that are not on disk yet; returns (images encoded now, images resumed).

    `recipe` makes the augmented train views; with `cut` (a :class:`cmm_cache.backbones.cut.TowerCut`) the
    block inputs of each plan's first ``block_views`` views are stored beside the features."""
    w = _collect(ds, plans, store, dist, batch_size)
    block_shape = tuple(cut.input_shape) if cut is not None else ()
    if progress:
        progress(w.resumed, w.total)
    buffers: dict[tuple[int, int], _ChunkBuffer] = {}
    written = done = 0
    for eb in iter_encoded(
        bb, w.items, w.batches, num_workers=num_workers, max_image_pixels=max_image_pixels, recipe=recipe, cut=cut
    ):
        blocks = eb.blocks if eb.blocks is not None else [None] * len(eb.keys)
        for key, feat, err, blk in zip(eb.keys, eb.features, eb.errors, blocks):
            pi, c, j = w.where[key]
            p = plans[pi]
            if err is not None and not skip_bad:
                raise _bad_image(w.items[key].path, err)
            buf = buffers.get((pi, c))
            if buf is None:
                bv = p.block_views if cut is not None else 0
                size = w.chunk_sizes[(pi, c)]
                buf = buffers[(pi, c)] = _ChunkBuffer(size, len(p.views), bb.embed_dim, bv, block_shape)
            if feat is not None:
                buf.features[j], buf.ok[j] = feat, True
                if buf.blocks is not None:
                    buf.blocks[j] = blk
            else:
                buf.errors[j] = err
            buf.filled += 1
            done += 1
            if buf.filled == w.chunk_sizes[(pi, c)]:
                store.save_chunk(p.name, c, buf.features, buf.ok, buf.errors, buf.blocks)
                del buffers[(pi, c)]
                written += 1
                if on_chunk:
                    on_chunk(ChunkWritten(p.name, c, len(buf.ok), written, store.chunk_path(p.name, c)))
        if progress:
            progress(w.resumed + done, w.total)
    return done, w.resumed
