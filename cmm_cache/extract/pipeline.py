"""Stage one: encode a dataset once with a backbone and write its cache (schema cmm-cache/1).

:func:`extract` takes an :class:`ExtractRequest` through three phases:

1. **resolve** (:func:`resolve`, :func:`decide`): the dataset, the backbone,
   the target path, the few-shot plan and the request's fingerprint; rank 0
   takes the cache's lock and decides: up to date, resume, or start afresh;
2. **run** (:func:`run`): rank 0 encodes the text, every rank its share of the
   images into chunk files of the work folder (:mod:`cmm_cache.extract.shard`);
3. **finish** (:func:`finish`): rank 0 assembles the one file from the
   chunks, renames it into place, and removes the work folder and any
   temporary file a killed run left.

Under torchrun (:mod:`cmm_cache.extract.distributed`) every rank runs the same code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmm_cache.backbones.cut import cut_tower
from cmm_cache.backbones.load import load_backbone
from cmm_cache.backbones.registry import resolve_backbone
from cmm_cache.cache.info import cache_summary
from cmm_cache.cache.locate import cache_path, record_last_extract
from cmm_cache.cache.lock import CacheLock, check_not_read
from cmm_cache.cache.partial import PartialStore, SplitPlan
from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.writer import assemble_cache, remove_stale_tmp
from cmm_cache.datasets.registry import load_dataset
from cmm_cache.errors import CmmError
from cmm_cache.extract.distributed import DistContext, init_distributed
from cmm_cache.extract.encode import (
    ViewRecipe,
    class_text_features,
    configure_cpu_threads,
    default_num_workers,
    encode_text_templates,
    views_for_split,
)
from cmm_cache.extract.plan import (
    DEFAULT_SEEDS,
    DEFAULT_SHOTS,
    ExtractableDataset,
    FewshotRows,
    build_provenance,
    check_dataset,
    default_shots,
    plan_splits,
    request_fingerprint,
    same_request,
)
from cmm_cache.extract.shard import ChunkFn, ChunkWritten, ProgressFn, encode_share
from cmm_cache.util.device import resolve_device

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_SEEDS",
    "DEFAULT_SHOTS",
    "ChunkWritten",
    "ExtractRequest",
    "ExtractResult",
    "extract",
    "run_extract",
]

DEFAULT_BATCH = 64
TextProgressFn = Callable[[str, int, int], None]  # (template set, prompts done, prompts total)
StageFn = Callable[[str], None]  # what starts now, e.g. "loading backbone rn50 on cpu", "writing <path>"
# Rows per chunk file of the work folder: what a killed run loses at most (per rank). Small files cost
# little (see the closing note of the change that set it); a resumed run keeps the size it started with.
DEFAULT_CHUNK_ROWS = 256


@dataclass
class ExtractRequest:
    """Everything a caller decides about one extraction (the CLI's options, one to one)."""

    dataset: object  # a name or path for cmm_cache.datasets.registry.load_dataset, or an ExtractableDataset
    backbone: str
    pretrained: str | os.PathLike | None = None
    data_root: str | os.PathLike | None = None
    cache_root: str | os.PathLike | None = None
    out: str | os.PathLike | None = None  # the cache file [default: <cache-dir>/<dataset>/<backbone>.h5]
    shots: Sequence[int] | None = None  # None: the protocol's K values, capped to what the data holds
    seeds: Sequence[int] = DEFAULT_SEEDS
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH
    num_workers: int | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    skip_bad: bool = False
    force: bool = False
    dataset_name: str | None = None  # the name recorded in the cache [default: as given]
    record_last: bool = True  # remember this cache for `fit` without arguments
    loaded_backbone: object = None  # reuse a Backbone already in memory (benchmarks)
    download: bool = False
    max_image_pixels: int | None = None  # larger images are unreadable [default: encode.DEFAULT_MAX_IMAGE_PIXELS]
    train_views: int = 2  # centre, mirror and train_views - 2 seeded random-resized-crop (+ flip) views
    views_seed: int = 0  # seeds the augmented views (with each image's manifest row and the view number)
    views_crop_scale: tuple = (0.5, 1.0)  # RandomResizedCrop scale of the augmented views
    finetune_blocks: int = 0  # K > 0: also store the input of the image tower's last K blocks
    progress: ProgressFn | None = field(default=None, repr=False)  # (images done, images total)
    text_progress: TextProgressFn | None = field(default=None, repr=False)  # (template set, prompts done, total)
    stage: StageFn | None = field(default=None, repr=False)  # called with what starts now ("loading the backbone")
    on_chunk: ChunkFn | None = field(default=None, repr=False)  # called after each chunk file is written
    on_note: Callable[[str], None] | None = field(default=None, repr=False)  # what to know before encoding starts


@dataclass
class ExtractResult:
    path: str
    dataset: str
    backbone: str
    status: str  # "written" | "up-to-date" | "text-added" | "views-added"
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


@dataclass
class ExtractJob:
    """A resolved request: the dataset, backbone, plan and target of this process's part of the work."""

    request: ExtractRequest
    dist: DistContext
    device: str
    ds: ExtractableDataset
    ds_name: str
    bb_name: str
    final: Path
    shots: list[int]
    seeds: list[int]
    plans: list[SplitPlan]
    fewshot: FewshotRows
    notes: list[str]
    workers: int
    bb: object
    fingerprint: dict
    store: PartialStore
    lock: CacheLock
    recipe: ViewRecipe = field(default_factory=ViewRecipe)
    cut: object = None  # cmm_cache.backbones.cut.TowerCut with --finetune-blocks


@dataclass
class _Encoded:
    text: dict | None  # set name -> per-template embeddings [C, M, d] (rank 0)
    done: int
    resumed: int
    seconds: float


def extract(dataset, backbone: str, **options) -> ExtractResult:
    """Encode `dataset` with `backbone` into its cache file; `options` are the fields of :class:`ExtractRequest`.

    Raises :class:`CmmError` for every user-facing failure (missing data or
    weights, a corrupt image without `skip_bad`, a locked or damaged cache, a
    partial run of a different request).
    """
    return run_extract(ExtractRequest(dataset, backbone, **options))


def run_extract(req: ExtractRequest) -> ExtractResult:
    import torch

    t0 = time.perf_counter()
    with contextlib.ExitStack() as cleanup:  # undone in reverse: lock, process group, thread count
        cleanup.callback(torch.set_num_threads, torch.get_num_threads())  # the thread policy is for this run only
        device = resolve_device(req.device)
        dist = init_distributed(device)
        cleanup.callback(dist.close)
        job = resolve(req, dist, dist.device(device))
        cleanup.callback(job.lock.release)
        if decide(job) == "up-to-date":
            job.lock.release()
            return _up_to_date_result(job, t0)
        enc = run(job)
        skipped = finish(job, enc)
        return _written_result(job, enc, skipped, t0)


# --------------------------------------------------------------------------- phase 1: resolve


def _load_dataset(req: ExtractRequest) -> tuple[ExtractableDataset, str]:
    if isinstance(req.dataset, (str, os.PathLike)):
        ds = load_dataset(str(req.dataset), req.data_root, download=req.download, cache_root=req.cache_root)
        return check_dataset(ds), req.dataset_name or str(req.dataset)
    ds = check_dataset(req.dataset)
    return ds, req.dataset_name or ds.name


def _workers(req: ExtractRequest, dist: DistContext, device: str) -> int:
    """Decoding workers (shared out among the ranks of one machine); on the CPU the encoder gets the rest."""

    workers = default_num_workers(device) if req.num_workers is None else int(req.num_workers)
    if dist.active and req.num_workers is None:
        workers = max(1, workers // dist.local_world)
    if not device.startswith("cuda") and req.loaded_backbone is None:
        configure_cpu_threads(workers, dist.local_world)
    return workers


def resolve(req: ExtractRequest, dist: DistContext, device: str) -> ExtractJob:
    """Everything decided before the lock: dataset, plan (files checked), backbone loaded, fingerprint."""

    ds, ds_name = _load_dataset(req)
    bb_name = str(req.backbone)
    spec = req.loaded_backbone.spec if req.loaded_backbone is not None else resolve_backbone(bb_name, req.pretrained)
    final = Path(req.out) if req.out else cache_path(ds_name, bb_name, req.cache_root)
    notes: list[str] = []
    recipe = view_recipe(req)
    seeds = sorted({int(s) for s in req.seeds})
    shots = sorted({int(k) for k in (default_shots(ds, seeds, notes) if req.shots is None else req.shots)})
    K = int(req.finetune_blocks or 0)
    plans, fewshot = plan_splits(ds, shots, seeds, int(req.chunk_rows), recipe.count, K > 0)
    ds.verify({p.name: p.rows for p in plans})
    workers = _workers(req, dist, device)
    if req.loaded_backbone is None and req.stage is not None:
        req.stage(f"loading backbone {bb_name} on {device}")
    bb = req.loaded_backbone if req.loaded_backbone is not None else load_backbone(spec, device=device)
    cut = cut_tower(bb.model.visual, K) if K > 0 else None
    if cut is not None:
        _size_note(plans, cut, final, notes, req.on_note if dist.is_main else None)
    return ExtractJob(
        request=req,
        dist=dist,
        device=device,
        ds=ds,
        ds_name=ds_name,
        bb_name=bb_name,
        final=final,
        shots=shots,
        seeds=seeds,
        plans=plans,
        fewshot=fewshot,
        notes=notes,
        workers=workers,
        bb=bb,
        fingerprint=request_fingerprint(ds, bb, plans, fewshot, recipe, cut.describe() if cut is not None else None),
        store=PartialStore(final),
        lock=CacheLock(final),
        recipe=recipe,
        cut=cut,
    )


def view_recipe(req: ExtractRequest) -> ViewRecipe:
    """The train views a request asks for (one clear error for impossible ones)."""
    n = int(req.train_views)
    if n < 2:
        raise CmmError(
            f"--train-views must be at least 2 (the centre view and its mirror), got {n}.",
            "Pass 2 for the centre and mirror views only, or more for augmented views as well.",
        )
    try:
        lo, hi = (float(v) for v in req.views_crop_scale)
        return ViewRecipe(count=n, crop_scale=(lo, hi), seed=int(req.views_seed))
    except (TypeError, ValueError) as e:
        raise CmmError(
            f"--views-crop-scale must be two numbers 0 < MIN <= MAX <= 1, got {req.views_crop_scale}.",
            "E.g. 0.5,1 (Tip-Adapter, GDA, ProLIP, LP++) or 0.08,1 (CLAP).",
        ) from e


LARGE_CACHE_BYTES = 1 << 30  # block inputs beyond this many bytes make a large file: said before encoding starts


def block_input_bytes(plans: Sequence[SplitPlan], input_shape: Sequence[int]) -> int:
    """Bytes of every split's block inputs: rows × stored views × the input's values × 2 (float16)."""
    per = 2 * int(np.prod([int(v) for v in input_shape]))
    return sum(p.n * p.block_views * per for p in plans)


def _free_bytes(path: Path) -> int | None:
    import shutil

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size_note(plans, cut, final: Path, notes: list[str], say: Callable[[str], None] | None) -> None:
    """Say how much the block inputs add, before any image is encoded; refuse when the disk cannot hold them
    twice (the work folder's chunk files and the assembled file exist together for a moment)."""
    from cmm_cache.cache.info import human_bytes

    n = block_input_bytes(plans, cut.input_shape)
    rows = sum(p.n * p.block_views for p in plans)
    shape = "×".join(str(v) for v in cut.input_shape)
    msg = (
        f"--finetune-blocks {cut.blocks}: the block inputs ({rows} rows of [{shape}] float16, "
        f"{human_bytes(2 * np.prod(cut.input_shape))} each) add about {human_bytes(n)} to the cache"
    )
    free = _free_bytes(final.parent)
    if free is not None and 2 * n > free:
        raise CmmError(
            f"{msg}, and writing it needs about {human_bytes(2 * n)} free beside {final} "
            f"(the chunk files and the file being assembled); {human_bytes(free)} is free there.",
            "Free space there, or pass --out to a disk with room (--cache-dir for the whole cache folder).",
        )
    if n >= LARGE_CACHE_BYTES:
        msg += f": a large file (writing it needs about {human_bytes(2 * n)} free for a moment)"
    if say is not None:
        say(msg)
    notes.append(msg)


def decide(job: ExtractJob) -> str:
    """Rank 0 takes the lock and decides ("run" or "up-to-date"); every rank gets the verdict."""
    verdict = {"action": "run", "chunk_rows": int(job.request.chunk_rows)}
    if job.dist.is_main:
        try:
            job.lock.acquire()
            verdict = _prepare(job)
        except CmmError as e:
            job.lock.release()
            verdict = {"action": "error", "message": e.message, "hint": e.hint}
    verdict = job.dist.broadcast(verdict)
    if verdict["action"] == "error":
        raise CmmError(verdict["message"], verdict.get("hint"))
    for p in job.plans:  # a resumed run keeps the chunk size it started with
        p.chunk_rows = int(verdict.get("chunk_rows") or p.chunk_rows)
    return verdict["action"]


def _prepare(job: ExtractJob) -> dict:
    """Rank 0, lock held: up to date, resume the work folder, or start one."""
    store, request, chunk_rows = job.store, job.fingerprint, int(job.request.chunk_rows)
    if job.request.force:
        check_not_read(job.final)  # before any work: a cache another process reads is not replaced
        store.clear()
    elif job.final.exists():
        _check_existing(job.final, request, job)
        return {"action": "up-to-date"}
    old = store.request()
    if old is not None:
        if not same_request(old.get("sha256"), request):
            raise CmmError(
                f"An unfinished extraction for a different request is in {store.dir}.",
                "Pass --force to discard it and start over, or repeat the original command to finish it.",
            )
        return {"action": "run", "chunk_rows": int(old.get("chunk_rows") or chunk_rows)}
    store.clear()
    store.start(request, chunk_rows)
    return {"action": "run", "chunk_rows": chunk_rows}


def _fingerprint_with_views(job: ExtractJob, count: int, recipe: dict | None) -> dict:
    """The request's fingerprint had it asked for `count` train views (of `recipe`, the cache's own)."""
    from dataclasses import replace

    r = job.recipe
    if recipe:
        r = ViewRecipe(count, tuple(recipe["crop_scale"]), tuple(recipe["ratio"]), float(recipe["flip_p"]),
                       int(recipe["seed"]))  # fmt: skip
    else:
        r = replace(r, count=count)
    plans = [replace(p, views=views_for_split(p.name, count)) if p.name == "train" else p for p in job.plans]
    cut = job.cut.describe() if job.cut is not None else None
    return request_fingerprint(job.ds, job.bb, plans, job.fewshot, r, cut)


def _views_cover(job: ExtractJob, cache, sha) -> bool:
    """Whether the existing cache is this request apart from its train views, and holds every view asked for
    (more views, or views added by --add-views, are fine). Refuses with the way out when it holds fewer."""
    if "train" not in cache.split_names:
        return False
    have, recipe = cache.views("train"), cache.view_recipe()
    first = (cache.provenance.get("train_views") or {}).get("count", 2)
    if not same_request(sha, _fingerprint_with_views(job, int(first), recipe)):
        return False
    want = job.recipe
    if want.augmented and recipe is not None:
        if [float(v) for v in recipe["crop_scale"]] != [float(v) for v in want.crop_scale] or int(
            recipe["seed"]
        ) != int(want.seed):
            return False
    if len(have) >= want.count:
        return True
    req = job.request
    raise CmmError(
        f"The cache at {job.final} holds {len(have)} train views; this request asks for {want.count}.",
        f"Add the others without re-encoding anything else: `cmm-cache extract --dataset {req.dataset} "
        f"--backbone {req.backbone} --add-views {want.count}` (or --force to re-extract it all).",
    )


def _check_existing(final: Path, request: dict, job: ExtractJob | None = None) -> None:
    """Return when the cache at `final` was written for this very request; else say what it is."""
    try:
        cache = open_cache(final)
        sha = cache.provenance.get("request_sha256")
    except CmmError as e:
        raise CmmError(
            f"The cache at {final} is damaged or unreadable: {e.message}",
            f"See what is wrong with `cmm-cache cache verify {final}`; pass --force to re-extract it "
            "(the damaged file stays in place until the new one is complete).",
        ) from e
    if same_request(sha, request) or (job is not None and sha is not None and _views_cover(job, cache, sha)):
        return
    if sha is None:
        raise CmmError(
            f"A cache already exists at {final}, not written by `cmm-cache extract` (its provenance has no "
            "request fingerprint).",
            "Pass --force to replace it with an extraction (the old file stays in place until the new one is "
            "complete), or --out PATH to write elsewhere.",
        )
    raise CmmError(
        f"A cache already exists at {final}, extracted for a different request "
        "(other shots/seeds, weights, manifest or preprocessing).",
        "Pass --force to re-extract it (the old file stays in place until the new one is complete).",
    )


# --------------------------------------------------------------------------- phase 2: run


def _text_embeddings(job: ExtractJob) -> dict:
    """Per-template text embeddings of every template set (kept in the work folder so a resume skips them)."""

    ds, text = job.ds, job.store.load_text()
    if text is None or set(text) != set(ds.templates) or any(v.ndim != 3 for v in text.values()):
        report = job.request.text_progress
        text = {
            name: encode_text_templates(
                job.bb, ds.classnames, tpl, progress=None if report is None else functools.partial(report, name)
            )
            for name, tpl in ds.templates.items()
        }
        job.store.save_text(text)
    return text


def run(job: ExtractJob) -> _Encoded:
    """Text on rank 0, then this rank's images; a failure on any rank stops every rank with its message."""
    req, err, enc = job.request, None, None
    try:
        text = _text_embeddings(job) if job.dist.is_main else None
        t = time.perf_counter()
        done, resumed = encode_share(
            job.ds,
            job.bb,
            job.plans,
            job.store,
            job.dist,
            batch_size=req.batch_size,
            num_workers=job.workers,
            skip_bad=req.skip_bad,
            progress=req.progress,
            on_chunk=req.on_chunk,
            max_image_pixels=req.max_image_pixels,
            recipe=job.recipe,
            cut=job.cut,
        )
        enc = _Encoded(text, done, resumed, time.perf_counter() - t)
    except Exception as e:  # every rank must hear of it, or the others wait for this one forever
        err = e
    job.dist.raise_any(err)
    return enc


# --------------------------------------------------------------------------- phase 3: finish


def finish(job: ExtractJob, enc: _Encoded) -> list[dict]:
    """Rank 0 writes the one file from the chunks; returns the skipped images (rank 0's view)."""

    skipped: list[dict] = []
    if job.dist.is_main:
        if job.request.stage is not None:
            job.request.stage(f"writing {job.final}")
        ds = job.ds
        text = {
            name: (class_text_features(enc.text[name]), ds.templates[name], enc.text[name]) for name in ds.templates
        }
        path, skipped = assemble_cache(
            job.final,
            job.store,
            dataset=job.ds_name,
            backbone=job.bb_name,
            provenance=_provenance(job),
            classnames=ds.classnames,
            text=text,
            default_templates=ds.default_templates,
            splits=job.plans,
            embed_dim=job.bb.embed_dim,
            fewshot=job.fewshot,
            wnids=ds.wnids,
            imagenet_index=ds.imagenet_index if ds.is_shift else None,
            paths={p.name: ds.splits[p.name].paths for p in job.plans},
            view_recipe=_recipe_record(job),
            cut=job.cut.describe() if job.cut is not None else None,
            block_weights={k: v.numpy() for k, v in job.cut.suffix_state().items()} if job.cut is not None else None,
        )
        job.store.clear()
        remove_stale_tmp(job.final)  # a killed earlier run's half-assembled file
        if job.request.record_last:
            record_last_extract(job.ds_name, job.bb_name, path, job.request.cache_root)
    job.dist.barrier()
    return skipped


def _result(job: ExtractJob, status: str, t0: float) -> ExtractResult:
    return ExtractResult(
        path=str(job.final),
        dataset=job.ds_name,
        backbone=job.bb_name,
        status=status,
        device=job.device,
        world_size=job.dist.world,
        rank=job.dist.rank,
        notes=job.notes,
        seconds=time.perf_counter() - t0,
    )


def _written_result(job: ExtractJob, enc: _Encoded, skipped: list[dict], t0: float) -> ExtractResult:
    r = _result(job, "written", t0)
    n_skipped: dict[str, int] = {}
    for s in skipped:
        n_skipped[s["split"]] = n_skipped.get(s["split"], 0) + 1
    r.splits = {p.name: p.n - n_skipped.get(p.name, 0) for p in job.plans}
    r.text_sets = sorted(job.ds.templates)
    r.fewshot_groups = len(job.fewshot)
    r.skipped = skipped
    r.images_encoded, r.images_resumed = enc.done, enc.resumed
    r.images_per_s = round(enc.done / enc.seconds, 2) if enc.done and enc.seconds > 0 else 0.0
    return r


def add_text_hint(dataset: str, backbone: str, out: str | os.PathLike | None = None) -> str:
    """The command that adds the per-template text nodes to an existing cache."""
    where = f" --out {out}" if out else ""
    return f"cmm-cache extract --dataset {dataset} --backbone {backbone}{where} --add-text"


def _up_to_date_result(job: ExtractJob, t0: float) -> ExtractResult:

    c = open_cache(job.final)
    r = _result(job, "up-to-date", t0)
    r.splits = dict(cache_summary(job.final).get("splits", {}))
    r.text_sets = c.text_sets
    r.fewshot_groups = len(c.fewshot_groups)
    r.skipped = c.provenance.get("skipped", [])
    lacking = [s for s in c.text_sets if not c.has_per_template(s)]
    if lacking:
        r.notes.append(
            f"this cache has no per-template text embeddings (text/<set>/per_template, needed by methods that "
            f"use each template as a sample; written by an older cmm-cache): add them with "
            f"`{add_text_hint(job.ds_name, job.bb_name, job.request.out)}`"
        )
    if job.request.record_last and job.dist.is_main:
        record_last_extract(job.ds_name, job.bb_name, job.final, job.request.cache_root)
    return r


def _recipe_record(job: ExtractJob) -> dict | None:
    if not job.recipe.augmented:
        return None
    from cmm_cache.extract.encode import ViewMaker

    return job.recipe.describe(ViewMaker(job.bb.preprocess).interpolation_name())


def _provenance(job: ExtractJob) -> dict:
    req = job.request
    blocks = None
    if job.cut is not None:
        blocks = {k: v for k, v in job.cut.describe().items() if k != "config"}
    return build_provenance(
        job.ds, job.ds_name, job.bb, job.bb_name, job.device, job.dist.world, job.shots, job.seeds,
        job.fingerprint, skip_bad=req.skip_bad, batch_size=req.batch_size, train_views=_recipe_record(job),
        blocks=blocks,
    )  # fmt: skip
