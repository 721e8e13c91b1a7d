"""What an extraction will write, decided before any image is read.

- :class:`ExtractableDataset`: the members ``extract`` uses on a dataset (a
  ``typing.Protocol``: any object with them works, :class:`cmm_cache.datasets.base.Dataset`
  among them);
- :func:`default_shots`: the protocol's K values, capped to what a small dataset holds;
- :func:`plan_splits`: the rows of each split (unions of the few-shot subsets for
  train/val, all of test) and each few-shot group's positions among them;
- :func:`request_fingerprint`: everything that decides the content of the cache;
  a cache or an unfinished run is reused only under the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from cmm_cache.cache.partial import SplitPlan
from cmm_cache.cache.schema import SCHEMA
from cmm_cache.errors import CmmError
from cmm_cache.extract.encode import ViewRecipe, views_for_split

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
# Caches written before the chunk size left the fingerprint hashed it in; the CLI always used 1024.
LEGACY_CHUNK_ROWS = 1024

FewshotRows = dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]


class SplitRows(Protocol):
    """One split list: image paths and their class ids, row for row."""

    paths: Sequence[str]
    labels: np.ndarray


@runtime_checkable
class ExtractableDataset(Protocol):
    """What :func:`cmm_cache.extract.pipeline.extract` needs from a dataset."""

    name: str
    classnames: list[str]  # as prompted
    templates: dict[str, list[str]]  # template-set name -> templates with "{}"
    default_templates: str
    splits: Mapping[str, SplitRows]  # "train", "val", "test"; a shift set has "test" only
    manifest_sha256: str  # identity of the dataset's definition (goes into the fingerprint)
    wnids: list[str] | None  # ImageNet family only
    imagenet_index: list[int] | None  # shift sets only

    @property
    def is_shift(self) -> bool:
        """Test-only set scored against a source dataset's classes (no few-shot subsets)."""
        ...

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, val rows): int64 positions into splits["train"] / splits["val"]."""
        ...

    def is_published(self, shots: int, seed: int) -> bool:
        """Whether (shots, seed) comes from shipped index files (then the data's size does not cap it)."""
        ...

    def max_shots(self) -> int:
        """The largest K a seeded draw supports (every class has K train and min(K, 4) val images)."""
        ...

    def verify(self, rows_by_split: Mapping[str, np.ndarray] | None = None, /) -> None:
        """Raise CmmError naming the missing files among the given rows (split -> row positions); None: all."""
        ...


_MEMBERS = ("name", "classnames", "templates", "default_templates", "splits", "manifest_sha256", "wnids",
            "imagenet_index", "is_shift", "fewshot", "is_published", "max_shots", "verify")  # fmt: skip


def check_dataset(ds) -> ExtractableDataset:
    """`ds` itself, or one clear error naming the members it lacks."""
    if isinstance(ds, ExtractableDataset):
        return ds
    missing = [m for m in _MEMBERS if not hasattr(ds, m)]
    raise CmmError(
        f"{type(ds).__name__} cannot be extracted: it lacks {', '.join(missing)}.",
        "Pass a dataset name or path, or an object with the members of cmm_cache.extract.plan.ExtractableDataset.",
    )


def default_shots(ds: ExtractableDataset, seeds: Sequence[int], notes: list[str]) -> list[int]:
    """The protocol's K values, without those a small dataset of your own cannot give (noted in `notes`)."""
    shots = list(DEFAULT_SHOTS)
    if ds.is_shift:
        return shots

    def published(k: int) -> bool:
        return all(ds.is_published(k, s) for s in seeds)

    if all(published(k) for k in shots):
        return shots
    cap = ds.max_shots()
    kept = [k for k in shots if k <= cap or published(k)]
    if not kept:
        raise CmmError(
            f"Dataset '{ds.name}' has a class with too few images for even a 1-shot subset "
            "(1 train and 1 val image per class are needed).",
            "Add images to the smallest class.",
        )
    if kept != shots:
        notes.append(
            f"default shots capped to {','.join(map(str, kept))}: the smallest class has "
            f"{cap} train image(s) (pass --shots to choose)"
        )
    return kept


def _need_splits(ds: ExtractableDataset) -> None:
    need = ("test",) if ds.is_shift else ("train", "val", "test")
    for s in need:
        if s not in ds.splits:
            raise CmmError(f"Dataset {ds.name} has no {s} split.", "Check its manifest.")


def plan_splits(
    ds: ExtractableDataset,
    shots: Sequence[int],
    seeds: Sequence[int],
    chunk_rows: int,
    train_views: int = 2,
    blocks: bool = False,
) -> tuple[list[SplitPlan], FewshotRows]:
    """(split plans, few-shot positions) for a dataset: unions of few-shot rows for train/val, all of test.

    Train holds `train_views` views per image (:func:`cmm_cache.extract.encode.views_for_split`); with
    `blocks`, the block inputs of the centre and mirror views (train) or the centre view (val, test) too.
    """

    _need_splits(ds)
    plans: list[SplitPlan] = []
    fewshot: FewshotRows = {}
    if not ds.is_shift:
        raw = {}
        for k in shots:
            for seed in seeds:
                tr, va = ds.fewshot(int(k), int(seed))
                raw[(int(k), int(seed))] = (np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64))
        for pi, s in enumerate(("train", "val")):
            parts = [v[pi] for v in raw.values()]
            rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            n_all = len(ds.splits[s].paths)
            if len(rows) and (rows.min() < 0 or rows.max() >= n_all):
                raise CmmError(f"Few-shot rows of {ds.name} point outside its {s} split ({n_all} images).")
            labels = np.asarray(ds.splits[s].labels, dtype=np.int64)[rows]
            views = views_for_split(s, train_views)
            bv = min(2, len(views)) if (blocks and s == "train") else int(blocks)
            plans.append(SplitPlan(s, rows.astype(np.int64), labels, views, chunk_rows, bv))
        for key, (tr, va) in raw.items():
            fewshot[key] = (
                np.searchsorted(plans[0].rows, tr).astype(np.int64),
                np.searchsorted(plans[1].rows, va).astype(np.int64),
            )
    test = ds.splits["test"]
    n_test = len(test.paths)
    labels = np.asarray(test.labels, dtype=np.int64)
    plans.append(
        SplitPlan("test", np.arange(n_test, dtype=np.int64), labels, views_for_split("test"), chunk_rows, int(blocks))
    )
    return plans, fewshot


def _digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes()).hexdigest()


def _sha(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def request_fingerprint(
    ds: ExtractableDataset,
    bb,
    plans: Sequence[SplitPlan],
    fewshot: FewshotRows,
    recipe: ViewRecipe | None = None,
    cut: dict | None = None,
) -> dict:
    """Everything that decides the content of the cache; a partial run resumes only under the same request.

    The chunk size of the work folder is not part of it (it only decides how
    much work a killed run loses). ``legacy_sha256`` is the fingerprint as
    earlier versions computed it (chunk size included), so their caches and
    unfinished runs are still recognized. Augmented train views (their recipe
    and seed) and block inputs (the cut: its blocks, shape and the weights'
    fingerprints) enter it only when asked for, so a plain request keeps the
    fingerprint it always had.
    """
    req = {
        "schema": SCHEMA,
        "dataset": ds.name,
        "manifest_sha256": ds.manifest_sha256,
        "model": bb.spec.model,
        "pretrained": bb.spec.pretrained,
        "weights_sha256": bb.weights_sha256,
        "preprocess": bb.preprocess_cfg
        and {k: (list(v) if isinstance(v, tuple) else v) for k, v in bb.preprocess_cfg.items()},
        "splits": {p.name: {"rows": _digest(p.rows), "labels": _digest(p.labels), "views": p.views} for p in plans},
        "fewshot": {f"{k}-{s}": [_digest(a), _digest(b)] for (k, s), (a, b) in sorted(fewshot.items())},
        "templates": {k: list(v) for k, v in ds.templates.items()},
    }
    if recipe is not None and recipe.augmented:
        req["train_views"] = {k: v for k, v in recipe.describe().items() if k != "augmented"}
    if cut is not None:
        req["blocks"] = {k: cut[k] for k in ("arch", "blocks", "input_shape", "prefix_sha256", "suffix_sha256")}
    return {**req, "sha256": _sha(req), "legacy_sha256": _sha({**req, "chunk_rows": LEGACY_CHUNK_ROWS})}


def features_request_sha256(fingerprint: dict) -> str:
    """The fingerprint's sha256 had it asked for no block inputs: what the features of the cache depend on."""
    return _sha({k: v for k, v in fingerprint.items() if k not in ("sha256", "legacy_sha256", "blocks")})


def same_request(sha: str | None, request: dict) -> bool:
    return sha is not None and sha in (request["sha256"], request["legacy_sha256"])


def build_provenance(
    ds: ExtractableDataset, ds_name: str, bb, bb_name: str, device: str, world: int, shots, seeds,
    fingerprint: dict, *, skip_bad: bool, batch_size: int, train_views: dict | None = None, blocks: dict | None = None,
) -> dict:  # fmt: skip
    """The cache's ``provenance`` attribute: the backbone's identity, the dataset's, versions, how it was run
    (and, when asked for, the augmented train views' recipe and seed and the block inputs' cut)."""
    import datetime as _dt
    import platform

    import open_clip
    import torch

    from cmm_cache import __version__

    gpu = None
    if str(device).startswith("cuda"):
        try:
            gpu = torch.cuda.get_device_name(torch.device(device))
        except Exception:
            gpu = None
    return {
        **bb.provenance(),
        "backbone": bb_name,
        "dataset": ds_name,
        "dataset_resolved": ds.name,
        "manifest_sha256": ds.manifest_sha256,
        "num_classes": len(ds.classnames),
        "text_features": "per class: encode every template, mean of the raw embeddings, L2-normalize",
        "image_features": "raw encode_image outputs (not normalized), float16",
        "versions": {
            "cmm_cache": __version__,
            "open_clip": getattr(open_clip, "__version__", None),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "device_name": gpu or platform.processor() or platform.machine(),
        "precision": "autocast float16" if str(device).startswith("cuda") else "float32",
        "world_size": world,
        "shots": list(shots),
        "seeds": list(seeds),
        "skip_bad": bool(skip_bad),
        "batch_size": int(batch_size),
        "request_sha256": fingerprint["sha256"],
        **({"train_views": train_views} if train_views else {}),
        **({"blocks": blocks, "features_request_sha256": features_request_sha256(fingerprint)} if blocks else {}),
    }
