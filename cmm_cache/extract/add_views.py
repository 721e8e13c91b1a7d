"""``extract --add-views N``: give an existing cache more augmented train views without re-encoding the rest.

Methods that follow their official code's augmented training views (Tip-Adapter's keys, GDA, ProLIP,
LP++, CLAP) read the ``rrc-*`` views of the train split; a cache extracted with the centre and mirror
views only lacks them. This encodes the missing views ``rrc-<m>`` … ``rrc-<N−2>`` of every cached train
image with the very backbone the cache was extracted with (checked against its provenance: architecture,
weights file sha256 or random-weights seed; and the centre view of the first images, encoded again, must
reproduce the cached features), with the cache's own view recipe and seed when it already holds augmented
views (a view ``rrc-i`` is the same crop whenever it is made), then writes a copy of the file with the
wider train features and renames it into place. Every other node — the centre and mirror views, val,
test, text, block inputs — and the provenance stay byte for byte, so runs fitted before still match the
cache; the new views' recipe, seed and how they were made are the train features' attributes. A killed
``--add-views`` leaves the cache as it was (the next one removes its temporary file).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import h5py
import numpy as np

from cmm_cache import __version__
from cmm_cache.backbones.load import load_backbone
from cmm_cache.cache.info import cache_summary
from cmm_cache.cache.locate import find_cache
from cmm_cache.cache.lock import CacheLock, no_readers
from cmm_cache.cache.reader import Cache, open_cache
from cmm_cache.cache.schema import DSET_KW, FEATURE_DTYPE
from cmm_cache.cache.writer import remove_stale_tmp
from cmm_cache.datasets.registry import load_dataset
from cmm_cache.errors import CmmError
from cmm_cache.extract.add_text import _identity
from cmm_cache.extract.encode import (
    ImageItem,
    ViewMaker,
    ViewRecipe,
    augmented_names,
    configure_cpu_threads,
    default_num_workers,
    iter_encoded,
)
from cmm_cache.extract.pipeline import ExtractResult
from cmm_cache.extract.plan import check_dataset
from cmm_cache.util.atomic import atomic_path
from cmm_cache.util.device import resolve_device

# The centre view encoded again must match the cached one this closely (cosine): float16 rounding and
# CPU vs GPU arithmetic differ by ~1e-3 at most, other weights or images by far more.
MIN_COSINE = 0.995
CHECK_IMAGES = 16


def _recipe(cache: Cache, n: int, seed: int | None, crop_scale) -> ViewRecipe:
    """The recipe of the new views: the cache's own when it has augmented views (then a different one asked
    for is refused), else the one asked for."""
    old = cache.view_recipe()
    if old is None:
        lo, hi = crop_scale if crop_scale is not None else (0.5, 1.0)
        return ViewRecipe(count=n, crop_scale=(float(lo), float(hi)), seed=int(seed or 0))
    have = ViewRecipe(
        count=n, crop_scale=tuple(old["crop_scale"]), ratio=tuple(old["ratio"]), flip_p=float(old["flip_p"]),
        seed=int(old["seed"]),
    )  # fmt: skip
    asked_scale = None if crop_scale is None else tuple(float(v) for v in crop_scale)
    if (seed is not None and int(seed) != have.seed) or (asked_scale is not None and asked_scale != have.crop_scale):
        raise CmmError(
            f"{cache.path} already holds augmented views made with crop scale {list(have.crop_scale)} and seed "
            f"{have.seed}; new views must follow the same recipe.",
            "Leave out --views-seed/--views-crop-scale, or re-extract with --force and the recipe you want.",
        )
    return have


def _dataset_paths(cache: Cache, dataset, data_root, cache_root=None) -> list[str]:
    """The image path of every cached train row (the dataset must be the one the cache was extracted from)."""
    if isinstance(dataset, (str, os.PathLike)):
        ds = load_dataset(str(dataset), data_root, cache_root=cache_root)
    else:
        ds = check_dataset(dataset)
    want = cache.provenance.get("manifest_sha256")
    if want and ds.manifest_sha256 != want:
        raise CmmError(
            f"The dataset '{dataset}' is not the one {cache.path} was extracted from (its manifest differs).",
            "Pass the --dataset (and --data-root) the cache was extracted with.",
        )
    paths = ds.splits["train"].paths
    index = cache.split("train").index
    if len(index) and (index.min() < 0 or index.max() >= len(paths)):
        raise CmmError(f"{cache.path}: train rows point outside the dataset's train split.", "Re-extract it.")
    ds.verify({"train": np.asarray(index, dtype=np.int64)})
    return [str(paths[int(i)]) for i in index]


def _encode(bb, paths, index, names, recipe, batch_size, workers, progress=None, max_image_pixels=None):
    """Yield (row position, float16 [len(names), d]) for every train image; a bad image stops with its path."""
    items = [ImageItem(key=i, path=p, views=tuple(names), row=int(r)) for i, (p, r) in enumerate(zip(paths, index))]
    per = max(1, int(batch_size) // max(1, len(names)))
    batches = [list(range(a, min(len(items), a + per))) for a in range(0, len(items), per)]
    done = 0
    for eb in iter_encoded(bb, items, batches, num_workers=workers, recipe=recipe, max_image_pixels=max_image_pixels):
        for key, feat, err in zip(eb.keys, eb.features, eb.errors):
            if err is not None:
                raise CmmError(
                    f"Cannot read image {items[key].path} ({err}).",
                    "The cache was extracted from this file: restore it, or re-extract with --force (--skip-bad).",
                )
            yield key, feat
        done += len(eb.keys)
        if progress:
            progress(done, len(items))


def _check_backbone(cache: Cache, bb, paths, index, workers) -> None:
    """The centre view of the first images, encoded again, must be the cached one (same weights, same images)."""
    k = min(CHECK_IMAGES, len(paths))
    if k == 0:
        return
    train = cache.split("train")
    centre = train.views.index("center") if "center" in train.views else 0
    got = np.stack([f[0] for _, f in _encode(bb, paths[:k], index[:k], ["center"], None, 64, workers)])
    want = train.features[:k, centre].astype(np.float32)
    got = got.astype(np.float32)
    cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    if float(cos.min()) < MIN_COSINE:
        raise CmmError(
            f"The centre views this backbone computes for the first train images do not match {cache.path} "
            f"(cosine {float(cos.min()):.4f}): not the weights, preprocessing or images it was extracted with.",
            "Pass the backbone, --pretrained file and --dataset/--data-root the cache was extracted with.",
        )


def _write(final: Path, old_views: list[str], recipe: ViewRecipe, new, attrs: dict) -> None:
    """Copy every node but splits/train/features, then write it again [n, N, d] (old views kept as they were)."""
    names = recipe.names
    # the file is replaced only when no other process reads it (as every cache writer: cache.lock.no_readers)
    with atomic_path(final, replace_guard=lambda: no_readers(final)) as tmp:
        with h5py.File(final, "r") as src, h5py.File(tmp, "w") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                if name != "splits":
                    src.copy(src[name], dst, name=name)
            for split in src["splits"]:
                g = dst.require_group(f"splits/{split}")
                for node in src[f"splits/{split}"]:
                    if not (split == "train" and node == "features"):
                        src.copy(src[f"splits/{split}/{node}"], g, name=node)
            old = src["splits/train/features"]
            n, V, d = old.shape
            feats = dst.create_dataset(
                "splits/train/features", shape=(n, len(names), d), maxshape=(None, len(names), d),
                chunks=(max(1, min(n, 1024)), len(names), d), dtype=FEATURE_DTYPE, **DSET_KW,
            )  # fmt: skip
            for k, v in old.attrs.items():
                feats.attrs[k] = v
            for a in range(0, n, 1024):
                feats[a : a + 1024, :V] = old[a : a + 1024]
            for row, f in new:
                feats[row, V:] = f
            feats.attrs["views"] = json.dumps(names)
            feats.attrs["view_recipe"] = json.dumps({**recipe.describe(attrs.pop("interpolation")), **attrs})


def add_views(
    dataset,
    backbone: str,
    views: int,
    *,
    pretrained: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    seed: int | None = None,
    crop_scale=None,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress=None,
    max_image_pixels: int | None = None,
) -> ExtractResult:
    """Give the cache of (`dataset`, `backbone`) (or the file `out`) `views` train views in all (see the module
    doc). `dataset`: as given to ``extract`` (a name or path, or the dataset object itself with `out`)."""

    final = Path(out) if out else find_cache(str(dataset), backbone, cache_root)
    if not final.exists():
        raise CmmError(
            f"No cache at {final} to add views to.",
            f"Extract it with the views: `cmm-cache extract --dataset {dataset} --backbone {backbone} "
            f"--train-views {views}`.",
        )
    dev = resolve_device(device)
    name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else str(getattr(dataset, "name", dataset))
    result = ExtractResult(path=str(final), dataset=name, backbone=backbone, status="up-to-date", device=dev)
    with CacheLock(final):
        cache = open_cache(final)
        if cache.is_shift or "train" not in cache.split_names:
            raise CmmError(f"{final} has no train split to add views to.")
        have = cache.views("train")
        expected = augmented_names(len(have))
        if have != expected or "hflip" not in have:
            raise CmmError(
                f"{final} has train views {have}: not the centre, mirror and rrc-1.. views this adds to.",
                "Re-extract it with `cmm-cache extract ... --train-views N --force`.",
            )
        if int(views) <= len(have):
            result.notes.append(f"the cache already holds {len(have)} train views ({', '.join(have[:4])}, ...)")
        else:
            recipe = _recipe(cache, int(views), seed, crop_scale)
            spec, _ = _identity(cache, backbone, pretrained)
            bb = load_backbone(spec, device=dev)
            workers = default_num_workers(dev) if num_workers is None else int(num_workers)
            if not dev.startswith("cuda"):
                configure_cpu_threads(workers)
            index = cache.split("train").index
            paths = _dataset_paths(cache, dataset, data_root, cache_root)
            _check_backbone(cache, bb, paths, index, workers)
            new_names = recipe.names[len(have) :]
            made = {
                "interpolation": ViewMaker(bb.preprocess).interpolation_name(),
                "added_by": f"cmm-cache {__version__} extract --add-views {int(views)}",
                "added_views": new_names,
                "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "device": dev,
                "precision": "autocast float16" if dev.startswith("cuda") else "float32",
            }
            encoded = _encode(bb, paths, index, new_names, recipe, batch_size, workers, progress, max_image_pixels)
            cache.close()  # our own reader lets go before the file is replaced
            _write(final, have, recipe, encoded, made)
            remove_stale_tmp(final)
            result.status = "views-added"
            result.images_encoded = len(paths)
            result.notes.append(
                f"added {len(new_names)} augmented train view(s) ({new_names[0]}..{new_names[-1]}) to "
                f"{len(paths)} images; the cache now holds {int(views)} train views"
            )
    cache = open_cache(final)
    result.text_sets = list(cache.text_sets)
    result.splits = dict(cache_summary(final).get("splits", {}))
    result.fewshot_groups = len(cache.fewshot_groups)
    return result
