"""Stage one: encode a dataset once with a backbone and write the cache (schema cmm-cache/1).

:func:`extract` ties the parts together: the dataset (rows to encode), the
backbone, the encoders (:mod:`cmm_cache.encode`) and the resumable writer
(:mod:`cmm_cache.cache`). Under torchrun every rank encodes a disjoint share
of the chunks and rank 0 assembles the one file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .cache import SCHEMA, CacheLock, PartialStore, SplitPlan, assemble_cache, cache_summary, open_cache
from .errors import CmmError

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_BATCH = 64
DEFAULT_CHUNK_ROWS = 1024

ProgressFn = Callable[[int, int], None]  # (images done, images total) of this process's share


class InjectedFailure(RuntimeError):
    """Raised by the test hook `fail_after_chunks` (simulates a killed run)."""


@dataclass
class ExtractResult:
    path: str
    dataset: str
    backbone: str
    status: str  # "written" | "up-to-date"
    splits: dict = field(default_factory=dict)  # split -> rows in the cache
    text_sets: list = field(default_factory=list)
    fewshot_groups: int = 0
    images_encoded: int = 0  # by this process in this call (views not counted twice)
    images_resumed: int = 0  # already in chunk files from an earlier run
    seconds: float = 0.0
    images_per_s: float = 0.0
    skipped: list = field(default_factory=list)
    device: str = "cpu"
    world_size: int = 1
    rank: int = 0
    notes: list = field(default_factory=list)  # things the user should know (e.g. default shots capped)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- planning


def plan_splits(ds, shots: Sequence[int], seeds: Sequence[int], chunk_rows: int):
    """(split plans, few-shot positions) for a dataset: unions of few-shot rows for train/val, all of test."""
    from .encode import views_for_split

    plans: list[SplitPlan] = []
    fewshot: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    if "test" not in ds.splits:
        raise CmmError(f"Dataset {ds.name} has no test split.", "Check its manifest.")
    if not ds.is_shift:
        for s in ("train", "val"):
            if s not in ds.splits:
                raise CmmError(f"Dataset {ds.name} has no {s} split.", "Check its manifest.")
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
            plans.append(SplitPlan(s, rows.astype(np.int64), labels, views_for_split(s), chunk_rows))
        for key, (tr, va) in raw.items():
            fewshot[key] = (
                np.searchsorted(plans[0].rows, tr).astype(np.int64),
                np.searchsorted(plans[1].rows, va).astype(np.int64),
            )
    n_test = len(ds.splits["test"].paths)
    plans.append(
        SplitPlan(
            "test",
            np.arange(n_test, dtype=np.int64),
            np.asarray(ds.splits["test"].labels, dtype=np.int64),
            views_for_split("test"),
            chunk_rows,
        )
    )
    return plans, fewshot


def _digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes()).hexdigest()


def request_fingerprint(ds, bb, plans, fewshot, chunk_rows: int) -> dict:
    """Everything that decides the bytes of the cache; a partial run resumes only under the same request."""
    req = {
        "schema": SCHEMA,
        "dataset": ds.name,
        "manifest_sha256": ds.manifest_sha256,
        "model": bb.spec.model,
        "pretrained": bb.spec.pretrained,
        "weights_sha256": bb.weights_sha256,
        "preprocess": bb.preprocess_cfg
        and {k: (list(v) if isinstance(v, tuple) else v) for k, v in bb.preprocess_cfg.items()},
        "chunk_rows": int(chunk_rows),
        "splits": {p.name: {"rows": _digest(p.rows), "labels": _digest(p.labels), "views": p.views} for p in plans},
        "fewshot": {f"{k}-{s}": [_digest(a), _digest(b)] for (k, s), (a, b) in sorted(fewshot.items())},
        "templates": {k: list(v) for k, v in ds.templates.items()},
    }
    req["sha256"] = hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode()).hexdigest()
    return req


# --------------------------------------------------------------------------- the run


def extract(
    dataset,
    backbone: str,
    *,
    pretrained: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    shots: Sequence[int] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    num_workers: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    skip_bad: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    fail_after_chunks: int | None = None,
    dataset_name: str | None = None,
    record_last: bool = True,
    loaded_backbone=None,
    download: bool = False,
) -> ExtractResult:
    """Encode `dataset` (a name/path for :func:`load_dataset`, or a Dataset) with `backbone` into its cache file.

    Returns an :class:`ExtractResult`. Raises :class:`CmmError` for every
    user-facing failure (missing data or weights, a corrupt image without
    `skip_bad`, a locked cache, a partial run of a different request).
    """
    from .backbones import load_backbone, resolve_backbone, resolve_device
    from .encode import (
        class_text_features,
        configure_cpu_threads,
        default_num_workers,
        encode_text_templates,
        init_distributed,
    )
    from .paths import cache_path, record_last_extract

    t_start = time.perf_counter()
    if fail_after_chunks is None and os.environ.get("CMM_CACHE_FAIL_AFTER_CHUNKS"):
        fail_after_chunks = int(os.environ["CMM_CACHE_FAIL_AFTER_CHUNKS"])  # test hook (subprocess tests)
    import torch

    threads_before = torch.get_num_threads()
    dev = resolve_device(device)
    dist = init_distributed(dev)
    try:
        dev = dist.device(dev)
        if isinstance(dataset, str):
            from .datasets import load_dataset

            ds_name = dataset_name or dataset
            ds = load_dataset(dataset, data_root, download=download, cache_root=cache_root)
        else:
            ds = dataset
            ds_name = dataset_name or ds.name
        spec = loaded_backbone.spec if loaded_backbone is not None else resolve_backbone(backbone, pretrained)
        bb_name = str(backbone)
        final = Path(out) if out else cache_path(ds_name, bb_name, cache_root)
        notes = []
        if shots is None:  # the protocol's K values, capped to what a small user dataset can give
            shots = list(DEFAULT_SHOTS)
            cap = ds.max_shots() if hasattr(ds, "max_shots") and not getattr(ds, "fewshot_indices", None) else None
            if cap is not None and not ds.is_shift and max(shots) > cap:
                shots = [k for k in shots if k <= cap]
                if not shots:
                    raise CmmError(
                        f"Dataset '{ds_name}' has a class with too few images for even a 1-shot subset "
                        "(1 train and 1 val image per class are needed).",
                        "Add images to the smallest class.",
                    )
                notes.append(
                    f"default shots capped to {','.join(map(str, shots))}: the smallest class has "
                    f"{cap} train image(s) (pass --shots to choose)"
                )
        shots = sorted({int(k) for k in shots})
        seeds = sorted({int(s) for s in seeds})
        plans, fewshot = plan_splits(ds, shots, seeds, int(chunk_rows))
        if hasattr(ds, "verify"):
            try:
                ds.verify({p.name: p.rows for p in plans})
            except NotImplementedError:
                pass

        workers = default_num_workers(dev) if num_workers is None else int(num_workers)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world)) if dist.active else 1
        if dist.active and num_workers is None:
            workers = max(1, workers // local_world)
        if not dev.startswith("cuda") and loaded_backbone is None:
            configure_cpu_threads(workers, local_world)
        bb = loaded_backbone if loaded_backbone is not None else load_backbone(spec, device=dev)
        request = request_fingerprint(ds, bb, plans, fewshot, chunk_rows)
        store = PartialStore(final)

        # ---- rank 0: lock, decide fresh / resume / up-to-date
        lock = CacheLock(final)
        verdict = {"action": "run"}
        if dist.is_main:
            try:
                lock.acquire()
                verdict = _prepare(final, store, request, force)
            except CmmError as e:
                lock.release()
                verdict = {"action": "error", "message": e.message, "hint": e.hint}
        verdict = dist.broadcast(verdict)
        if verdict["action"] == "error":
            raise CmmError(verdict["message"], verdict.get("hint"))
        result = ExtractResult(
            path=str(final),
            dataset=ds_name,
            backbone=bb_name,
            status="up-to-date",
            device=dev,
            world_size=dist.world,
            rank=dist.rank,
            notes=notes,
        )
        if verdict["action"] == "up-to-date":
            lock.release()
            c = open_cache(final)
            result.splits = dict(cache_summary(final).get("splits", {}))
            result.text_sets = c.text_sets
            result.fewshot_groups = len(c.fewshot_groups)
            result.skipped = c.provenance.get("skipped", [])
            result.seconds = time.perf_counter() - t_start
            if record_last and dist.is_main:
                record_last_extract(ds_name, bb_name, final, cache_root)
            return result

        try:
            err = None
            try:
                # Text first on rank 0 (cheap, and kept in the work folder so a resume skips it).
                text = None
                if dist.is_main:
                    text = store.load_text()
                    if text is None or set(text) != set(ds.templates) or any(v.ndim != 3 for v in text.values()):
                        text = {
                            name: encode_text_templates(bb, ds.classnames, tpl) for name, tpl in ds.templates.items()
                        }
                        store.save_text(text)
                t_enc = time.perf_counter()
                done, resumed = _encode_share(
                    ds,
                    bb,
                    plans,
                    store,
                    dist,
                    batch_size=batch_size,
                    num_workers=workers,
                    skip_bad=skip_bad,
                    progress=progress,
                    fail_after_chunks=fail_after_chunks,
                )
                result.images_encoded, result.images_resumed = done, resumed
                enc_s = time.perf_counter() - t_enc
                result.images_per_s = round(done / enc_s, 2) if done and enc_s > 0 else 0.0
            except (CmmError, InjectedFailure) as e:
                err = e
            errors = dist.gather_errors(
                None if err is None else (type(err).__name__, str(err), getattr(err, "hint", None))
            )
            if err is not None:
                raise err
            bad = [e for e in errors if e is not None]
            if bad:
                raise CmmError(f"Another torchrun rank failed: {bad[0][1]}", bad[0][2])

            if dist.is_main:
                provenance = _provenance(
                    ds, ds_name, bb, bb_name, dev, dist.world, shots, seeds, request, skip_bad, batch_size
                )
                path, skipped = assemble_cache(
                    final,
                    store,
                    dataset=ds_name,
                    backbone=bb_name,
                    provenance=provenance,
                    classnames=ds.classnames,
                    text={
                        name: (class_text_features(text[name]), ds.templates[name], text[name]) for name in ds.templates
                    },
                    default_templates=ds.default_templates,
                    splits=plans,
                    embed_dim=bb.embed_dim,
                    fewshot=fewshot,
                    wnids=ds.wnids,
                    imagenet_index=ds.imagenet_index if ds.is_shift else None,
                    paths={p.name: ds.splits[p.name].paths for p in plans},
                )
                store.clear()
                result.skipped = skipped
                if record_last:
                    record_last_extract(ds_name, bb_name, path, cache_root)
            dist.barrier()
        finally:
            lock.release()
        result.status = "written"
        n_skipped = {}
        for s in result.skipped:
            n_skipped[s["split"]] = n_skipped.get(s["split"], 0) + 1
        result.splits = {p.name: p.n - n_skipped.get(p.name, 0) for p in plans}
        result.text_sets = sorted(ds.templates)
        result.fewshot_groups = len(fewshot)
        result.seconds = time.perf_counter() - t_start
        return result
    finally:
        dist.close()
        torch.set_num_threads(threads_before)  # the thread policy is for this run only


def _prepare(final: Path, store: PartialStore, request: dict, force: bool) -> dict:
    """Rank 0, lock held: decide whether to run (fresh or resumed) or whether the cache is already there."""
    if force:
        store.clear()
    elif final.exists():
        try:
            c = open_cache(final)
            same = c.provenance.get("request_sha256") == request["sha256"]
        except CmmError:
            same = False
        if same:
            return {"action": "up-to-date"}
        raise CmmError(
            f"A cache already exists at {final}, extracted for a different request "
            "(other shots/seeds, weights, manifest or preprocessing).",
            "Pass --force to re-extract it (the old file stays in place until the new one is complete).",
        )
    old = store.request()
    if old is not None and old.get("sha256") != request["sha256"]:
        raise CmmError(
            f"An unfinished extraction for a different request is in {store.dir}.",
            "Pass --force to discard it and start over, or repeat the original command to finish it.",
        )
    if old is None:
        store.clear()
        store.start(request)
    return {"action": "run"}


def _encode_share(ds, bb, plans, store, dist, *, batch_size, num_workers, skip_bad, progress, fail_after_chunks):
    """Encode this rank's chunks that are not on disk yet; returns (images encoded now, images resumed)."""
    from .encode import ImageItem, iter_encoded

    items: list[ImageItem] = []
    batches: list[list[int]] = []
    chunk_of_item: list[tuple[int, int, int]] = []  # (plan idx, chunk, offset in chunk)
    chunk_sizes: dict[tuple[int, int], int] = {}
    resumed = 0
    total = 0
    for pi, p in enumerate(plans):
        V = len(p.views)
        per_batch = max(1, int(batch_size) // V)  # a batch holds about batch_size images, views included
        paths = ds.splits[p.name].paths
        for c in range(p.num_chunks):
            if c % dist.world != dist.rank:
                continue
            a, b = p.chunk_range(c)
            total += b - a
            if store.has_chunk(p.name, c):
                resumed += b - a
                continue
            chunk_sizes[(pi, c)] = b - a
            start = len(items)
            for j, r in enumerate(range(a, b)):
                items.append(ImageItem(key=len(items), path=str(paths[int(p.rows[r])]), views=V))
                chunk_of_item.append((pi, c, j))
            for s in range(start, len(items), per_batch):
                batches.append(list(range(s, min(len(items), s + per_batch))))
    if progress:
        progress(resumed, total)
    buffers: dict[tuple[int, int], dict] = {}
    written = 0
    done = 0
    for eb in iter_encoded(bb, items, batches, num_workers=num_workers):
        for key, feat, err in zip(eb.keys, eb.features, eb.errors):
            pi, c, j = chunk_of_item[key]
            p = plans[pi]
            if err is not None and not skip_bad:
                raise CmmError(
                    f"Cannot read image {items[key].path} ({err}).",
                    "Fix or remove the file, or pass --skip-bad to leave it out (it is then listed in the cache's "
                    "provenance). Chunks already encoded are kept: the same command resumes.",
                )
            buf = buffers.get((pi, c))
            if buf is None:
                m = chunk_sizes[(pi, c)]
                buf = buffers[(pi, c)] = {
                    "features": np.zeros((m, len(p.views), bb.embed_dim), np.float16),
                    "ok": np.zeros(m, bool),
                    "errors": [None] * m,
                    "filled": 0,
                }
            if feat is not None:
                buf["features"][j] = feat
                buf["ok"][j] = True
            else:
                buf["errors"][j] = err
            buf["filled"] += 1
            done += 1
            if buf["filled"] == chunk_sizes[(pi, c)]:
                store.save_chunk(p.name, c, buf["features"], buf["ok"], buf["errors"])
                del buffers[(pi, c)]
                written += 1
                if fail_after_chunks is not None and written >= fail_after_chunks:
                    if os.environ.get("CMM_CACHE_FAIL_MODE") == "kill":  # test hook: die like `kill -9`
                        import signal

                        os.kill(os.getpid(), signal.SIGKILL)
                    raise InjectedFailure(f"injected failure after {written} chunk(s)")
        if progress:
            progress(resumed + done, total)
    return done, resumed


def _provenance(ds, ds_name, bb, bb_name, device, world, shots, seeds, request, skip_bad, batch_size) -> dict:
    import open_clip
    import torch

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
        "request_sha256": request["sha256"],
    }
