"""Running the CLIP encoders: images through a DataLoader with worker processes, text per template set.

- Images are decoded and preprocessed (open_clip's own transform for the
  backbone) in DataLoader worker processes, so decoding overlaps the encoder.
- A train image is encoded as is ("center") and mirrored ("hflip", p = 1.0:
  the decoded image is mirrored, then the same transform applies), and with
  ``extract --train-views N`` in N − 2 more seeded augmented views ("rrc-1",
  …): RandomResizedCrop (scale (0.5, 1) by default, ratio (3/4, 4/3), the
  backbone's interpolation) then a horizontal flip with p = 0.5 — the recipe of
  Tip-Adapter, GDA, ProLIP and LP++ (:class:`ViewRecipe`). Each view's crop and
  flip are drawn from a generator seeded by (seed, manifest row, view number),
  so a view is the same whatever the batch, worker, rank or resume.
- With a tower cut (``extract --finetune-blocks K``, :mod:`cmm_cache.backbones.cut`)
  the encoder runs as prefix then suffix; the prefix's output (the input of the
  last K blocks) is returned too, for the centre/mirror views.
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
AUGMENTED_PREFIX = "rrc-"  # names of the augmented train views: rrc-1, rrc-2, ...


@dataclass(frozen=True)
class ViewRecipe:
    """The train views of a cache: centre, mirror and ``count − 2`` seeded random-resized-crop (+ flip) views.

    The augmented views follow the official few-shot codes' train transform (Tip-Adapter ``main.py``,
    GDA ``main_few_shots.py``, ProLIP ``main.py``, LP++ ``main.py``): ``RandomResizedCrop(size,
    scale=crop_scale, ratio=(3/4, 4/3), bicubic)`` then ``RandomHorizontalFlip(p=0.5)``, then the
    backbone's own tensor conversion and normalization. CLAP's (Dassl's) default crop scale is
    (0.08, 1): ``extract --views-crop-scale 0.08,1``.
    """

    count: int = 2
    crop_scale: tuple = (0.5, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    seed: int = 0

    def __post_init__(self):
        lo, hi = (float(v) for v in self.crop_scale)
        if int(self.count) < 1 or not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"bad view recipe: count {self.count}, crop scale {self.crop_scale}")

    @property
    def names(self) -> list[str]:
        return augmented_names(self.count)

    @property
    def augmented(self) -> int:
        return max(0, int(self.count) - 2)

    def describe(self, interpolation: str | None = None) -> dict:
        """What the cache records about its train views (provenance and the features node's attrs)."""
        return {
            "count": int(self.count),
            "names": self.names,
            "augmented": (
                f"RandomResizedCrop(scale={list(self.crop_scale)}, ratio=[3/4, 4/3], "
                f"{interpolation or 'bicubic'}) then RandomHorizontalFlip(p={self.flip_p}), then the backbone's "
                "ToTensor + Normalize; per view a numpy Generator seeded by (seed, manifest row, view number)"
            ),
            "crop_scale": [float(v) for v in self.crop_scale],
            "ratio": [float(v) for v in self.ratio],
            "flip_p": float(self.flip_p),
            "seed": int(self.seed),
        }


def augmented_names(count: int) -> list[str]:
    """View names of a train split with `count` views: center, hflip, rrc-1, ..., rrc-(count-2)."""
    base = ["center", "hflip"][: max(1, min(2, int(count)))]
    return base + [f"{AUGMENTED_PREFIX}{i}" for i in range(1, int(count) - 1)]


def views_for_split(split: str, train_views: int = 2) -> list[str]:
    return augmented_names(train_views) if split == "train" else list(VIEWS_EVAL)


def rrc_params(width: int, height: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's ``RandomResizedCrop.get_params``
    algorithm (10 tries of area × log-uniform aspect ratio, else the central crop of the clamped ratio),
    drawing from `rng` instead of torch's global generator."""
    import math

    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_rng(seed: int, row: int, view: int) -> np.random.Generator:
    """The generator of augmented view `view` (1-based) of manifest row `row`: independent of everything else."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(row), int(view)]))


class ViewMaker:
    """PIL image -> tensor [3, H, W] for a named view (picklable: it runs in DataLoader workers)."""

    def __init__(self, transform, recipe: ViewRecipe | None = None, image_size=None):
        self.transform = transform
        self.recipe = recipe or ViewRecipe()
        steps = list(getattr(transform, "transforms", []))
        geometric = [k for k, t in enumerate(steps) if "Resize" in type(t).__name__ or "Crop" in type(t).__name__]
        self._post = steps[geometric[-1] + 1 :] if geometric else None
        interp = [getattr(t, "interpolation", None) for t in steps if "Resize" in type(t).__name__]
        self.interpolation = next((i for i in interp if i is not None), None)
        size = image_size or next((getattr(t, "size", None) for t in steps if "CenterCrop" in type(t).__name__), None)
        if isinstance(size, int):
            size = (size, size)
        self.size = tuple(int(v) for v in size) if size is not None else None

    def interpolation_name(self) -> str:
        i = self.interpolation
        return str(getattr(i, "value", i) or "bicubic")

    def __call__(self, img, name: str, row: int):
        if name == "center":
            return self.transform(img)
        if name == "hflip":
            from PIL import ImageOps

            return self.transform(ImageOps.mirror(img))
        if name.startswith(AUGMENTED_PREFIX):
            return self.augmented(img, int(name[len(AUGMENTED_PREFIX) :]), row)
        raise ValueError(f"unknown view {name!r}")

    def augmented(self, img, view: int, row: int):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        if self._post is None or self.size is None:
            raise ValueError("the backbone's transform has no resize/crop step to replace with a random resized crop")
        r = self.recipe
        rng = view_rng(r.seed, row, view)
        top, left, h, w = rrc_params(img.width, img.height, r.crop_scale, r.ratio, rng)
        interp = self.interpolation if self.interpolation is not None else InterpolationMode.BICUBIC
        out = TF.resized_crop(img, top, left, h, w, list(self.size), interpolation=interp, antialias=True)
        if rng.random() < r.flip_p:
            out = TF.hflip(out)
        for t in self._post:
            out = t(out)
        return out


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
    """One image to encode: its key (caller's bookkeeping), path, its views (a count: 1 centre, 2 centre and
    mirror, N: also rrc-1..; or a tuple of view names), its manifest row (seeds its augmented views) and how
    many of its first views also give their block inputs (with a tower cut)."""

    key: int
    path: str
    views: int | tuple = 1
    row: int = 0
    block_views: int = 0

    @property
    def view_names(self) -> tuple:
        return tuple(self.views) if isinstance(self.views, (tuple, list)) else tuple(augmented_names(self.views))


class _ImageDataset:
    """Map-style dataset for torch's DataLoader: item -> (key, tensor [V,3,H,W] or None, error or None)."""

    def __init__(
        self, items: Sequence[ImageItem], transform, views: ViewMaker | None = None, max_pixels: int | None = None
    ):
        self.items = list(items)
        self.views = views or ViewMaker(transform)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        import torch

        it = self.items[k]
        try:
            img = load_image(it.path, max_pixels=self.max_pixels)
            views = [self.views(img, name, it.row) for name in it.view_names]
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
    blocks: list[np.ndarray | None] | None = None  # with a cut, per item: float16 [block_views, *input shape]


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


def encode_block_inputs(cut, images, device: str):
    """Block inputs float16 [B, *shape] of a preprocessed batch: the frozen tower up to the cut, rounded to
    float16 as the cache stores them."""
    import torch

    with torch.inference_mode(), autocast_context(device):
        return cut.prefix(images).to(torch.float16)


def encode_cut_batch(cut, images, device: str):
    """(raw image features float32 [B, d], block inputs float16 [B, *shape]) through a tower cut: the prefix
    then the suffix, which is the whole image tower (the same computation, so the same features)."""
    import torch

    with torch.inference_mode(), autocast_context(device):
        h = cut.prefix(images)
        f = cut.suffix(h)
    return f.float(), h.to(torch.float16)


def iter_encoded(
    backbone,
    items: Sequence[ImageItem],
    batches: Sequence[Sequence[int]],
    *,
    num_workers: int | None = None,
    prefetch_factor: int = 2,
    max_image_pixels: int | None = None,
    recipe: ViewRecipe | None = None,
    cut=None,
) -> Iterator[EncodedBatch]:
    """Encode `items` in the given batches (lists of positions into `items`), in order.

    Batches are fixed by the caller so the same batch composition (hence the
    same numbers) comes out of an interrupted-and-resumed run. An image above
    `max_image_pixels` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`) is reported as unreadable. `recipe` makes
    the augmented views; with `cut` (:class:`cmm_cache.backbones.cut.TowerCut`)
    each item's first ``block_views`` views also give their block inputs.
    """
    from torch.utils.data import DataLoader

    if not batches:
        return
    device = backbone.device
    cuda = str(device).startswith("cuda")
    workers = default_num_workers(device) if num_workers is None else max(0, int(num_workers))
    loader = DataLoader(
        _ImageDataset(
            items,
            backbone.preprocess,
            ViewMaker(backbone.preprocess, recipe, backbone.image_size),
            max_image_pixels,
        ),
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        persistent_workers=False,
    )
    model = backbone.model
    by_key = {it.key: it for it in items}
    for keys, images, counts, errors in loader:
        feats_out: list[np.ndarray | None] = [None] * len(keys)
        blocks_out: list[np.ndarray | None] | None = None if cut is None else [None] * len(keys)
        if images is not None:
            x = images.to(device, non_blocking=cuda)
            if cut is None:
                f = encode_image_batch(model, x, device).cpu().numpy().astype(np.float16)
            else:
                f, h = encode_cut_batch(cut, x, device)
                f = f.cpu().numpy().astype(np.float16)
            o = 0
            for i, c in enumerate(counts):
                if c:
                    feats_out[i] = f[o : o + c]
                    if blocks_out is not None:
                        b = min(c, by_key[keys[i]].block_views)
                        blocks_out[i] = h[o : o + b].cpu().numpy()
                    o += c
        yield EncodedBatch(keys=list(keys), features=feats_out, errors=list(errors), blocks=blocks_out)


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
