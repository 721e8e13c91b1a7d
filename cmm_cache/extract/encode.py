"""Running the CLIP encoders: images through a DataLoader with worker processes, text per template set.

- Images are decoded and preprocessed (open_clip's own transform for the
  backbone) in DataLoader worker processes, so decoding overlaps the encoder.
- A train image is encoded twice: as is ("center") and mirrored ("hflip",
  p = 1.0: the decoded image is mirrored, then the same transform applies).
- A file that cannot be decoded is never a crash inside a worker: the worker
  reports the path and error, and the caller decides (stop, or skip).
- On CUDA, batches are pinned, copied asynchronously, and encoded under
  autocast float16; on the CPU everything is float32.
- Features are raw (un-normalized) ``encode_image`` outputs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

VIEWS_TRAIN = ["center", "hflip"]
VIEWS_EVAL = ["center"]


def views_for_split(split: str) -> list[str]:
    return list(VIEWS_TRAIN) if split == "train" else list(VIEWS_EVAL)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(device: str = "cpu") -> int:
    """Decoding workers: min(8, cores) to feed a GPU; on the CPU half the cores (the encoder needs the rest)."""
    n = _cores()
    if str(device).startswith("cuda"):
        return max(1, min(8, n))
    return max(1, min(8, n // 2))


# The largest image decoded (width × height): 8192 × 8192 = 67 Mpx, about 200 MB once decoded to RGB. A small
# file can hold a huge image (a 140 KB PNG of 144 Mpx decodes to 0.4 GB), in every decoding worker at once.
# Raise it with --max-image-pixels (extract, predict); PIL's own limit (Image.MAX_IMAGE_PIXELS) is set to it.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """An image above the pixel limit (reported per file, like any unreadable image)."""


def load_image(path: str, flip: bool = False, max_pixels: int | None = None):
    """Decode one image fully (a truncated file fails here, not later) as RGB; mirrored when `flip`.

    An image of more than `max_pixels` pixels (default :data:`DEFAULT_MAX_IMAGE_PIXELS`) is refused before it
    is decoded (:class:`ImageTooLarge`)."""
    from PIL import Image, ImageOps

    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused here instead
            Image.MAX_IMAGE_PIXELS = None  # the header's size is checked here, with a message naming it
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise ImageTooLarge(_too_large(f"{w} × {h} = {w * h / 1e6:.1f} Mpx", limit))
                Image.MAX_IMAGE_PIXELS = limit  # PIL's own checks while decoding (frames, tiles) use it too
                im.load()
                img = im.convert("RGB")
    except Image.DecompressionBombError as e:  # PIL refused while decoding (above twice its limit)
        m = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageTooLarge(_too_large(f"{int(m.group(1)) / 1e6:.1f} Mpx" if m else "too large", limit)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return ImageOps.mirror(img) if flip else img


def _too_large(size: str, limit: int) -> str:
    return (
        f"{size}, above the limit of {limit / 1e6:.1f} Mpx (raise it with --max-image-pixels if the image is genuine)"
    )


@dataclass(frozen=True)
class ImageItem:
    """One image to encode: its key (caller's bookkeeping), path and number of views (1, or 2 with hflip)."""

    key: int
    path: str
    views: int = 1


class _ImageDataset:
    """Map-style dataset for torch's DataLoader: item -> (key, tensor [V,3,H,W] or None, error or None)."""

    def __init__(self, items: Sequence[ImageItem], transform, max_pixels: int | None = None):
        self.items = list(items)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        import torch

        it = self.items[k]
        try:
            img = load_image(it.path, max_pixels=self.max_pixels)
            views = [self.transform(img)]
            if it.views >= 2:
                from PIL import ImageOps

                views.append(self.transform(ImageOps.mirror(img)))
            return it.key, torch.stack(views), None
        except Exception as e:  # corrupt, truncated, unreadable: report, never crash the worker
            return it.key, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    import torch

    keys = [b[0] for b in batch]
    good = [b[1] for b in batch if b[1] is not None]
    counts = [0 if b[1] is None else b[1].shape[0] for b in batch]
    errors = [b[2] for b in batch]
    images = torch.cat(good, 0) if good else None
    return keys, images, counts, errors


@dataclass
class EncodedBatch:
    keys: list[int]
    features: list[np.ndarray | None]  # per item: float16 [V, d], None when the image failed
    errors: list[str | None]


def autocast_context(device: str):
    import contextlib

    import torch

    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def encode_image_batch(model, images, device: str):
    """Raw image features float32 [B, d] of a preprocessed batch (already on `device`)."""
    import torch

    with torch.inference_mode(), autocast_context(device):
        return model.encode_image(images).float()


def iter_encoded(
    backbone,
    items: Sequence[ImageItem],
    batches: Sequence[Sequence[int]],
    *,
    num_workers: int | None = None,
    prefetch_factor: int = 2,
    max_image_pixels: int | None = None,
) -> Iterator[EncodedBatch]:
    """Encode `items` in the given batches (lists of positions into `items`), in order.

    Batches are fixed by the caller so the same batch composition (hence the
    same numbers) comes out of an interrupted-and-resumed run. An image above
    `max_image_pixels` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`) is reported as unreadable.
    """
    from torch.utils.data import DataLoader

    if not batches:
        return
    device = backbone.device
    cuda = str(device).startswith("cuda")
    workers = default_num_workers(device) if num_workers is None else max(0, int(num_workers))
    loader = DataLoader(
        _ImageDataset(items, backbone.preprocess, max_image_pixels),
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        persistent_workers=False,
    )
    model = backbone.model
    for keys, images, counts, errors in loader:
        feats_out: list[np.ndarray | None] = [None] * len(keys)
        if images is not None:
            x = images.to(device, non_blocking=cuda)
            f = encode_image_batch(model, x, device).cpu().numpy().astype(np.float16)
            o = 0
            for i, c in enumerate(counts):
                if c:
                    feats_out[i] = f[o : o + c]
                    o += c
        yield EncodedBatch(keys=list(keys), features=feats_out, errors=list(errors))


def encode_text(
    backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int | None = None
) -> np.ndarray:
    """Class text features float32 [C, d]: encode every template, average, L2-normalize (paper eq. 2)."""
    return class_text_features(encode_text_templates(backbone, classnames, templates, batch_size))


def class_text_features(per_template: np.ndarray) -> np.ndarray:
    """[C, M, d] raw per-template embeddings -> [C, d]: the mean of the raw embeddings, then L2-normalized.

    (Paper eq. 2: the average is over raw template embeddings; the class
    feature is normalized once, after averaging.)
    """
    feats = np.asarray(per_template, dtype=np.float64).mean(1)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    return feats.astype(np.float32)


TEXT_BATCH_CUDA = 256
TEXT_BATCH_CPU = 32  # a CPU encodes a few dozen prompts per second with a large text tower: report often


def encode_text_templates(
    backbone,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Raw (un-normalized) text embeddings float32 [C, M, d] of every class × template prompt.

    `progress(prompts done, prompts total)` is called before the first batch and after each one
    (`batch_size` prompts; default 256 on a GPU, 32 on the CPU).
    """
    import torch

    templates = list(templates)
    if not templates:
        raise ValueError("no templates")
    prompts = [t.replace("{}", c) if "{}" in t else f"{t} {c}" for c in classnames for t in templates]
    model, device = backbone.model, backbone.device
    if batch_size is None:
        batch_size = TEXT_BATCH_CUDA if str(device).startswith("cuda") else TEXT_BATCH_CPU
    out = []
    if progress is not None:
        progress(0, len(prompts))
    with torch.inference_mode(), autocast_context(device):
        for i in range(0, len(prompts), batch_size):
            tok = backbone.tokenizer(prompts[i : i + batch_size]).to(device)
            out.append(model.encode_text(tok).float().cpu())
            if progress is not None:
                progress(min(i + batch_size, len(prompts)), len(prompts))
    return torch.cat(out, 0).reshape(len(classnames), len(templates), -1).numpy().astype(np.float32)


def configure_cpu_threads(num_workers: int, processes: int = 1) -> int:
    """On the CPU, leave the decoding workers their cores: torch threads = cores/processes - workers (at least 1)."""
    import torch

    threads = max(1, _cores() // max(1, processes) - max(0, int(num_workers)))
    torch.set_num_threads(threads)
    return threads
