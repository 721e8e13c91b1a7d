"""The HDF5 feature cache, schema ``cmm-cache/1`` (docs/cache-schema.md).

This module owns the schema: node names, dtypes, the reader every stage-two
command uses, and a one-shot writer for features already in memory (used for
converting foreign feature files and by tests). The streaming, resumable writer
of ``extract`` builds on the same constants.

Layout of one file::

    attrs: schema, dataset, backbone, provenance (JSON), default_templates
    classes/names            str   [C]
    classes/wnids            str   [C]   ImageNet family only
    classes/imagenet_index   int64 [C]   shift sets only
    text/<set>/features      f32   [C, d]   attr templates (JSON list)
    text/<set>/per_template  f32   [C, M, d] optional: raw embedding of each of the M templates
    splits/<split>/features  f16   [n, V, d] attr views (JSON list)
    splits/<split>/labels    int64 [n]
    splits/<split>/index     int64 [n]
    fewshot/shot_<K>-seed_<S>/train, /val   int64 row positions
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path, write_text
from .errors import CmmError
from .fewshot import GROUP_RE, group_name, parse_group

SCHEMA = "cmm-cache/1"
FEATURE_DTYPE = np.float16
TEXT_DTYPE = np.float32
INDEX_DTYPE = np.int64

# Checksums (fletcher32) on every dataset so `cache verify` and any read detect
# a flipped byte; fletcher32 requires chunked storage, which h5py then picks.
DSET_KW = dict(fletcher32=True)


def string_array(values: Sequence[str]) -> np.ndarray:
    """Fixed-length UTF-8 strings: unlike variable-length ones they can carry a checksum."""
    encoded = [str(v).encode("utf-8") for v in values]
    width = max([len(b) for b in encoded] + [1])
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width))


def provenance_sha256(provenance_json: str) -> str:
    """The hash a run records to tie itself to the cache it was fitted on."""
    return hashlib.sha256(provenance_json.encode("utf-8")).hexdigest()


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass
class Split:
    """One split held in memory: features [n, V, d] (float16), labels, index, views."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    views: list[str]


@dataclass
class Cache:
    """A read-only view of one cache file.

    Attributes are read eagerly (they are small); features are read on demand
    by :meth:`split` so a large test split is only loaded when needed.
    """

    path: Path
    dataset: str
    backbone: str
    provenance: dict
    provenance_json: str
    default_templates: str
    classnames: list[str]
    wnids: list[str] | None
    imagenet_index: np.ndarray | None
    text_sets: list[str]
    split_names: list[str]
    fewshot_groups: list[tuple[int, int]]
    _text_cache: dict = field(default_factory=dict, repr=False)

    @property
    def provenance_sha256(self) -> str:
        return provenance_sha256(self.provenance_json)

    @property
    def dataset_name(self) -> str:
        """The dataset's short name: the registered name, or your folder/CSV's name (``dtd10`` for
        ``extract --dataset path/to/dtd10``); the ``dataset`` attribute keeps the name as given."""
        return str(self.provenance.get("dataset_resolved") or self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def embed_dim(self) -> int:
        return int(self.text().shape[1])

    @property
    def is_shift(self) -> bool:
        return self.imagenet_index is not None

    def text(self, name: str | None = None) -> np.ndarray:
        """Class text features [C, d] float32 of template set `name` (default set if None)."""
        name = name or self.default_templates
        if name not in self.text_sets:
            raise CmmError(
                f"Cache {self.path} has no text features for template set '{name}'.",
                f"Available template sets: {', '.join(self.text_sets)}.",
            )
        if name not in self._text_cache:
            with _open(self.path) as f:
                self._text_cache[name] = np.asarray(f[f"text/{name}/features"][...], dtype=np.float32)
        return self._text_cache[name]

    def has_per_template(self, name: str | None = None) -> bool:
        """Whether the optional ``text/<set>/per_template`` node exists (caches from cmm-cache >= 0.2)."""
        name = name or self.default_templates
        with _open(self.path) as f:
            return f"text/{name}/per_template" in f

    def text_per_template(self, name: str | None = None) -> np.ndarray:
        """Raw per-template text embeddings [C, M, d] float32 of template set `name` (optional node).

        Methods that use each template's embedding as a sample (cross-modal
        linear probing) need these; caches written before they existed lack them.
        """
        name = name or self.default_templates
        self.text(name)  # an unknown set gets its own clear message
        key = f"text/{name}/per_template"
        with _open(self.path) as f:
            if key not in f:
                raise CmmError(
                    f"Cache {self.path} has no per-template text embeddings ({key}): it was written by an "
                    "older cmm-cache or another tool.",
                    f"Add them with `cmm-cache extract --dataset {self.dataset} --backbone {self.backbone} "
                    "--add-text` (text encoder only, the image features are kept).",
                )
            try:
                return np.asarray(f[key][...], dtype=np.float32)
            except OSError as e:
                raise CmmError(
                    f"Cache {self.path} is damaged ({key}): {e}.",
                    "Run `cmm-cache cache verify` and re-extract it with `cmm-cache extract --force`.",
                ) from e

    def templates(self, name: str | None = None) -> list[str]:
        name = name or self.default_templates
        with _open(self.path) as f:
            return json.loads(_str(f[f"text/{name}/features"].attrs["templates"]))

    def split(self, name: str) -> Split:
        if name not in self.split_names:
            raise CmmError(
                f"Cache {self.path} has no '{name}' split.",
                f"It holds: {', '.join(self.split_names) or 'none'}.",
            )
        with _open(self.path) as f:
            g = f[f"splits/{name}"]
            try:
                feats = g["features"][...]
                labels = g["labels"][...].astype(np.int64)
                index = g["index"][...].astype(np.int64)
            except OSError as e:  # fletcher32 mismatch or a truncated file
                raise CmmError(
                    f"Cache {self.path} is damaged (split '{name}'): {e}.",
                    "Run `cmm-cache cache verify` and re-extract it with `cmm-cache extract --force`.",
                ) from e
            views = json.loads(_str(g["features"].attrs.get("views", '["center"]')))
        return Split(features=feats, labels=labels, index=index, views=views)

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (train, val) into splits/train and splits/val for (K, seed)."""
        if (int(shots), int(seed)) not in self.fewshot_groups:
            have = ", ".join(f"{k}-shot/seed {s}" for k, s in self.fewshot_groups) or "none"
            raise CmmError(
                f"Cache {self.path} has no few-shot subset for {shots} shots, seed {seed}.",
                f"It holds: {have}. Re-run `cmm-cache extract` with --shots/--seeds covering it.",
            )
        with _open(self.path) as f:
            g = f[f"fewshot/{group_name(shots, seed)}"]
            rows = {part: g[part][...].astype(np.int64) for part in ("train", "val")}
            # Another tool may have written this file: never index past a split.
            for part, r in rows.items():
                n = f[f"splits/{part}/labels"].shape[0] if f"splits/{part}/labels" in f else 0
                if r.size and (r.min() < 0 or r.max() >= n):
                    raise CmmError(
                        f"Cache {self.path}: few-shot group {group_name(shots, seed)}/{part} points at "
                        f"rows outside splits/{part} ({n} rows).",
                        "The file does not follow the schema; run `cmm-cache cache verify` and re-extract it.",
                    )
            return rows["train"], rows["val"]


class _open:
    """h5py.File opened read-only with errors turned into one clear message."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> h5py.File:
        if not self.path.exists():
            raise CmmError(
                f"No cache file at {self.path}.",
                "Run `cmm-cache extract --dataset NAME --backbone NAME` first, or pass --cache PATH.",
            )
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise CmmError(
                f"Cannot read {self.path} as an HDF5 cache ({e}).",
                "The file is damaged or not a cmm-cache file; re-extract it with `cmm-cache extract --force`.",
            ) from e
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        return False


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a schema-conformant cache file; refuse anything else with a clear message."""
    path = Path(path)
    with _open(path) as f:
        schema = _str(f.attrs.get("schema", ""))
        if schema != SCHEMA:
            raise CmmError(
                f"{path} is not a {SCHEMA} cache (schema attribute: {schema or 'missing'}).",
                "Only files written by `cmm-cache extract` or following docs/cache-schema.md can be read.",
            )
        try:
            prov_json = _str(f.attrs.get("provenance", "{}"))
            provenance = json.loads(prov_json)
            names = [_str(x) for x in f["classes/names"][...]]
            wnids = [_str(x) for x in f["classes/wnids"][...]] if "classes/wnids" in f else None
            inet = f["classes/imagenet_index"][...].astype(np.int64) if "classes/imagenet_index" in f else None
            text_sets = sorted(f["text"].keys()) if "text" in f else []
            split_names = sorted(f["splits"].keys()) if "splits" in f else []
            groups = []
            for key in f["fewshot"].keys() if "fewshot" in f else []:
                if GROUP_RE.match(key):
                    groups.append(parse_group(key))
            default = _str(f.attrs.get("default_templates", text_sets[0] if text_sets else ""))
            dataset = _str(f.attrs["dataset"])
            backbone = _str(f.attrs["backbone"])
        except (KeyError, OSError, json.JSONDecodeError) as e:
            raise CmmError(
                f"{path} does not follow schema {SCHEMA}: {e}.",
                "Re-extract it with `cmm-cache extract --force`.",
            ) from e
    if not text_sets:
        raise CmmError(f"{path} has no text features (text/<set>/features).", "Re-extract it.")
    return Cache(
        path=path,
        dataset=dataset,
        backbone=backbone,
        provenance=provenance,
        provenance_json=prov_json,
        default_templates=default,
        classnames=names,
        wnids=wnids,
        imagenet_index=inet,
        text_sets=text_sets,
        split_names=split_names,
        fewshot_groups=sorted(groups),
    )


def _write_header(
    f: h5py.File, dataset, backbone, provenance, default_templates, classnames, wnids, imagenet_index, text
) -> None:
    """Root attributes, classes/ and text/: the part of the schema every writer shares."""
    f.attrs["schema"] = SCHEMA
    f.attrs["dataset"] = dataset
    f.attrs["backbone"] = backbone
    f.attrs["provenance"] = json.dumps(dict(provenance), sort_keys=True)
    f.attrs["default_templates"] = default_templates
    f.create_dataset("classes/names", data=string_array(classnames), **DSET_KW)
    if wnids is not None:
        f.create_dataset("classes/wnids", data=string_array(wnids), **DSET_KW)
    if imagenet_index is not None:
        f.create_dataset("classes/imagenet_index", data=np.asarray(imagenet_index, dtype=INDEX_DTYPE), **DSET_KW)
    for name, entry in text.items():
        feats, templates = entry[0], entry[1]
        d = f.create_dataset(f"text/{name}/features", data=np.asarray(feats, dtype=TEXT_DTYPE), **DSET_KW)
        d.attrs["templates"] = json.dumps(list(templates))
        per_template = entry[2] if len(entry) > 2 else None
        if per_template is not None:
            per_template = np.asarray(per_template, dtype=TEXT_DTYPE)
            if per_template.ndim != 3 or per_template.shape[1] != len(templates):
                raise ValueError(f"text set {name}: per_template must be [C, {len(templates)}, d]")
            f.create_dataset(f"text/{name}/per_template", data=per_template, **DSET_KW)


def write_cache(
    path: str | os.PathLike,
    *,
    dataset: str,
    backbone: str,
    provenance: Mapping,
    classnames: Sequence[str],
    text: Mapping[str, tuple],
    default_templates: str,
    splits: Mapping[str, Split],
    fewshot: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    wnids: Sequence[str] | None = None,
    imagenet_index: Sequence[int] | None = None,
) -> Path:
    """Write a whole cache from arrays in memory, atomically (temp file + rename).

    `text` maps set name -> (features [C, d], templates[, per_template [C, M, d]]); `splits` maps split
    name -> :class:`Split`; `fewshot` maps (K, seed) -> (train rows, val rows).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_header(f, dataset, backbone, provenance, default_templates, classnames, wnids, imagenet_index, text)
            for name, s in splits.items():
                feats = np.asarray(s.features, dtype=FEATURE_DTYPE)
                if feats.ndim != 3:
                    raise ValueError(f"split {name}: features must be [n, V, d], got {feats.shape}")
                d = f.create_dataset(f"splits/{name}/features", data=feats, **DSET_KW)
                d.attrs["views"] = json.dumps(list(s.views))
                f.create_dataset(f"splits/{name}/labels", data=np.asarray(s.labels, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"splits/{name}/index", data=np.asarray(s.index, dtype=INDEX_DTYPE), **DSET_KW)
            for (k, seed), (tr, va) in (fewshot or {}).items():
                g = f"fewshot/{group_name(k, seed)}"
                f.create_dataset(f"{g}/train", data=np.asarray(tr, dtype=INDEX_DTYPE), **DSET_KW)
                f.create_dataset(f"{g}/val", data=np.asarray(va, dtype=INDEX_DTYPE), **DSET_KW)
    return path


# =========================================================================== streaming, resumable writing
#
# `extract` never writes the final file until everything is encoded:
#
#   <final>.partial/            work folder, one per cache
#       request.json            fingerprint of the request (dataset manifest, backbone + weights,
#                               preprocessing, row lists, chunk size); a different request refuses to mix
#       text.npz                text features of every template set (written once)
#       <split>.<chunk>.npz     features [m, V, d] float16 + ok flags + errors of one chunk of rows,
#                               each written to a temp name and renamed: a chunk file is complete or absent
#   <final>.tmp-<pid>           the HDF5 file being assembled from the chunks (streamed, flat memory)
#   <final>                     renamed into place only when complete; the work folder is then removed
#   <final>.lock                fcntl lock held by the one writer (released by the OS when it dies)
#
# A killed run resumes by skipping the chunk files already present.

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"


def partial_dir(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def lock_path(final: Path) -> Path:
    return final.with_name(final.name + LOCK_SUFFIX)


class CacheLock:
    """An exclusive OS-level lock (fcntl.flock) on ``<final>.lock``.

    A second writer fails at once with a clear message; the lock of a process
    that died is released by the kernel, so it never blocks forever.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.path = lock_path(self.final)
        self.fd: int | None = None

    def acquire(self) -> CacheLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise CmmError(
                f"Another extraction is writing {self.final} right now" + (f" ({holder})." if holder else "."),
                "Wait for it to finish (it holds " + str(self.path) + "), or stop it; "
                "a second writer is refused so the cache cannot be corrupted.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _atomic_savez(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _atomic_write_text(path: Path, text: str) -> None:
    write_text(path, text)


class PartialStore:
    """The work folder of one extraction in progress (see the comment above)."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.dir = partial_dir(self.final)

    # -- request
    def request(self) -> dict | None:
        try:
            return json.loads((self.dir / "request.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def start(self, request: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.dir / "request.json", json.dumps(request, sort_keys=True, indent=1))

    def clear(self) -> None:
        import shutil

        if self.dir.exists():
            shutil.rmtree(self.dir)

    # -- chunks
    def chunk_path(self, split: str, chunk: int) -> Path:
        return self.dir / f"{split}.{chunk:06d}.npz"

    def has_chunk(self, split: str, chunk: int) -> bool:
        return self.chunk_path(split, chunk).is_file()

    def save_chunk(self, split: str, chunk: int, features: np.ndarray, ok: np.ndarray, errors: Sequence[str]) -> None:
        _atomic_savez(
            self.chunk_path(split, chunk),
            features=np.asarray(features, dtype=FEATURE_DTYPE),
            ok=np.asarray(ok, dtype=bool),
            errors=np.asarray(json.dumps(list(errors))),
        )

    def load_chunk(self, split: str, chunk: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        p = self.chunk_path(split, chunk)
        try:
            with np.load(p) as z:
                return z["features"], z["ok"], json.loads(str(z["errors"]))
        except Exception as e:
            p.unlink(missing_ok=True)
            raise CmmError(
                f"Chunk {p.name} of the unfinished extraction is unreadable ({e}); it was removed.",
                "Run the same command again: the missing chunk is encoded again.",
            ) from e

    # -- text
    def save_text(self, text: Mapping[str, np.ndarray]) -> None:
        """Per-template raw text embeddings [C, M, d] of every template set."""
        _atomic_savez(
            self.dir / "text.npz",
            **{f"set_{i}": np.asarray(v, dtype=TEXT_DTYPE) for i, v in enumerate(text.values())},
            names=np.asarray(json.dumps(list(text.keys()))),
        )

    def load_text(self) -> dict[str, np.ndarray] | None:
        p = self.dir / "text.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                names = json.loads(str(z["names"]))
                return {n: z[f"set_{i}"] for i, n in enumerate(names)}
        except Exception:
            p.unlink(missing_ok=True)
            return None


@dataclass
class SplitPlan:
    """What one split of the cache holds: manifest rows, labels, views, chunking."""

    name: str
    rows: np.ndarray  # manifest rows, in cache order
    labels: np.ndarray
    views: list[str]
    chunk_rows: int

    @property
    def n(self) -> int:
        return int(len(self.rows))

    @property
    def num_chunks(self) -> int:
        return (self.n + self.chunk_rows - 1) // self.chunk_rows

    def chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min(self.n, (c + 1) * self.chunk_rows)


def _chunks_for_rows(n: int) -> int:
    return max(1, min(n, 1024))


def assemble_cache(
    final: str | os.PathLike,
    store: PartialStore,
    *,
    dataset: str,
    backbone: str,
    provenance: dict,
    classnames: Sequence[str],
    text: Mapping[str, tuple],
    default_templates: str,
    splits: Sequence[SplitPlan],
    embed_dim: int,
    fewshot: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    wnids: Sequence[str] | None = None,
    imagenet_index: Sequence[int] | None = None,
    paths: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Path, list[dict]]:
    """Stream the chunk files of `store` into one schema-conformant HDF5 file, renamed into place at the end.

    Rows whose image failed (only present with --skip-bad) are dropped; the
    few-shot positions are remapped to the kept rows and the skipped files are
    listed in the provenance. Returns (final path, skipped list).
    """
    final = Path(final)
    skipped: list[dict] = []
    keep: dict[str, np.ndarray] = {}
    # First pass over the small ok/errors arrays only, to size every dataset.
    for sp in splits:
        mask = np.ones(sp.n, dtype=bool)
        for c in range(sp.num_chunks):
            a, b = sp.chunk_range(c)
            with np.load(store.chunk_path(sp.name, c)) as z:
                ok = z["ok"]
                errs = json.loads(str(z["errors"]))
            if len(ok) != b - a:
                raise CmmError(
                    f"Chunk {sp.name}.{c} of {store.dir} has {len(ok)} rows, expected {b - a}.", "Re-run with --force."
                )
            mask[a:b] = ok
            for i in np.flatnonzero(~ok):
                skipped.append(
                    {
                        "split": sp.name,
                        "row": int(sp.rows[a + i]),
                        "path": str(paths[sp.name][int(sp.rows[a + i])]) if paths and sp.name in paths else None,
                        "error": errs[i] if i < len(errs) else None,
                    }
                )
        keep[sp.name] = mask
    prov = dict(provenance)
    prov["skipped"] = skipped
    with atomic_path(final) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_header(f, dataset, backbone, prov, default_templates, classnames, wnids, imagenet_index, text)
            for sp in splits:
                mask = keep[sp.name]
                n_keep = int(mask.sum())
                V = len(sp.views)
                d = f.create_dataset(
                    f"splits/{sp.name}/features",
                    shape=(n_keep, V, embed_dim),
                    maxshape=(None, V, embed_dim),
                    chunks=(_chunks_for_rows(n_keep), V, embed_dim),
                    dtype=FEATURE_DTYPE,
                    **DSET_KW,
                )
                d.attrs["views"] = json.dumps(list(sp.views))
                o = 0
                for c in range(sp.num_chunks):
                    a, b = sp.chunk_range(c)
                    feats, ok, _ = store.load_chunk(sp.name, c)
                    if feats.shape[1:] != (V, embed_dim):
                        raise CmmError(
                            f"Chunk {sp.name}.{c} has shape {feats.shape}, expected [*, {V}, {embed_dim}].",
                            "Re-run with --force.",
                        )
                    feats = feats[ok]
                    d[o : o + len(feats)] = feats
                    o += len(feats)
                for key, arr in (("labels", sp.labels[mask]), ("index", sp.rows[mask])):
                    f.create_dataset(
                        f"splits/{sp.name}/{key}",
                        data=np.asarray(arr, dtype=INDEX_DTYPE),
                        maxshape=(None,),
                        chunks=(max(1, min(n_keep, 65536)),),
                        **DSET_KW,
                    )
            remap = {}
            for sp in splits:
                m = np.full(sp.n, -1, dtype=np.int64)
                m[keep[sp.name]] = np.arange(int(keep[sp.name].sum()))
                remap[sp.name] = m
            for (k, seed), (tr, va) in sorted((fewshot or {}).items()):
                g = f"fewshot/{group_name(k, seed)}"
                for part, pos in (("train", tr), ("val", va)):
                    pos = np.asarray(pos, dtype=np.int64)
                    if part in remap:
                        pos = remap[part][pos]
                        pos = pos[pos >= 0]
                    f.create_dataset(
                        f"{g}/{part}",
                        data=pos.astype(INDEX_DTYPE),
                        maxshape=(None,),
                        chunks=(max(1, min(len(pos), 65536)),),
                        **DSET_KW,
                    )
    return final, skipped


# =========================================================================== inspection: ls, info, verify


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cache_summary(path: str | os.PathLike) -> dict:
    """Small facts about one cache file (for `cache ls`); never raises: damage shows as `error`."""
    path = Path(path)
    row = {"path": str(path), "size_bytes": path.stat().st_size if path.exists() else 0}
    row["size"] = _human_bytes(row["size_bytes"])
    try:
        c = open_cache(path)
        with _open(path) as f:
            sizes = {s: int(f[f"splits/{s}/features"].shape[0]) for s in c.split_names}
        row.update(
            dataset=c.dataset,
            backbone=c.backbone,
            classes=c.num_classes,
            embed_dim=c.embed_dim,
            splits=sizes,
            fewshot=[f"{k}x{s}" for k, s in c.fewshot_groups],
            created=c.provenance.get("created"),
        )
    except CmmError as e:
        row["error"] = e.message
    return row


def list_caches(cache_root: str | os.PathLike | None = None) -> list[dict]:
    """Every `<cache-dir>/<dataset>/<backbone>.h5`, plus unfinished extractions (`.partial`)."""
    from .paths import cache_dir

    root = cache_dir(cache_root)
    rows = []
    if not root.is_dir():
        return rows
    for p in sorted(root.glob("*/*.h5")):
        rows.append(cache_summary(p))
    for p in sorted(root.glob("*/*.h5" + PARTIAL_SUFFIX)):
        if p.is_dir():
            n = len(list(p.glob("*.*.npz")))
            rows.append(
                {
                    "path": str(p),
                    "dataset": p.parent.name,
                    "backbone": p.name[: -len(".h5" + PARTIAL_SUFFIX)],
                    "unfinished": True,
                    "chunks_done": n,
                    "size_bytes": sum(q.stat().st_size for q in p.iterdir() if q.is_file()),
                }
            )
            rows[-1]["size"] = _human_bytes(rows[-1]["size_bytes"])
    return rows


def _node_info(f: h5py.File) -> list[dict]:
    nodes = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            nodes.append(
                {
                    "node": name,
                    "shape": list(obj.shape),
                    "dtype": str(obj.dtype),
                    "checksum": bool(obj.fletcher32),
                    "attrs": {k: _str(v) for k, v in obj.attrs.items()},
                }
            )

    f.visititems(visit)
    return nodes


def cache_info(path: str | os.PathLike) -> dict:
    """Attributes, provenance and every node (shape, dtype, checksum) of a cache file."""
    path = Path(path)
    with _open(path) as f:
        attrs = {k: _str(v) for k, v in f.attrs.items() if k != "provenance"}
        try:
            prov = json.loads(_str(f.attrs.get("provenance", "{}")))
        except json.JSONDecodeError:
            prov = {"error": "provenance is not JSON"}
        nodes = _node_info(f)
    return {"path": str(path), "size_bytes": path.stat().st_size, "attrs": attrs, "provenance": prov, "nodes": nodes}


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Read every dataset (checksums verified by HDF5) and check the schema.

    Returns the problems found (empty = sound).
    """
    path = Path(path)
    problems: list[str] = []
    if not path.is_file():
        return [f"no file at {path}"]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"not readable as HDF5: {e}"]
    with f:

        def need_attr(name):
            if name not in f.attrs:
                problems.append(f"attribute '{name}' missing")
                return None
            return _str(f.attrs[name])

        schema = need_attr("schema")
        if schema is not None and schema != SCHEMA:
            problems.append(f"attribute schema is '{schema}', expected '{SCHEMA}'")
        for a in ("dataset", "backbone", "default_templates"):
            need_attr(a)
        prov = need_attr("provenance")
        if prov is not None:
            try:
                json.loads(prov)
            except json.JSONDecodeError:
                problems.append("attribute provenance is not valid JSON")

        data: dict[str, np.ndarray] = {}

        nonfinite: set[str] = set()

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                if not obj.fletcher32:
                    problems.append(f"{name}: stored without a checksum")
                try:
                    if obj.ndim == 3:  # image features: read in blocks (memory stays flat), keep nothing
                        step = max(1, (64 << 20) // max(1, obj.dtype.itemsize * obj.shape[1] * obj.shape[2]))
                        for a in range(0, obj.shape[0], step):
                            if not np.all(np.isfinite(obj[a : a + step])):
                                nonfinite.add(name)
                    else:
                        data[name] = obj[...]
                except OSError as e:
                    problems.append(f"{name}: damaged data ({e})")

        f.visititems(visit)

        def arr(name):
            return data.get(name)

        names = arr("classes/names")
        C = None
        if "classes/names" not in f:
            problems.append("classes/names missing")
        elif names is not None:
            C = len(names)
        if (
            "classes/wnids" in f
            and arr("classes/wnids") is not None
            and C is not None
            and len(arr("classes/wnids")) != C
        ):
            problems.append("classes/wnids length differs from classes/names")
        inet = arr("classes/imagenet_index")
        if inet is not None and C is not None:
            if len(inet) != C:
                problems.append("classes/imagenet_index length differs from classes/names")
            if len(inet) and (inet.min() < 0 or inet.max() >= 1000):
                problems.append("classes/imagenet_index outside 0..999")
        d = None
        if "text" not in f or not len(f["text"]):
            problems.append("no text/<set>/features")
        else:
            for s in f["text"]:
                key = f"text/{s}/features"
                if key not in f:
                    problems.append(f"{key} missing")
                    continue
                ds_ = f[key]
                if ds_.dtype != np.float32 or ds_.ndim != 2:
                    problems.append(f"{key}: expected float32 [C, d], got {ds_.dtype} {ds_.shape}")
                    continue
                if C is not None and ds_.shape[0] != C:
                    problems.append(f"{key}: {ds_.shape[0]} rows for {C} classes")
                d = d or ds_.shape[1]
                if ds_.shape[1] != d:
                    problems.append(f"{key}: dimension {ds_.shape[1]} differs from {d}")
                if "templates" not in ds_.attrs:
                    problems.append(f"{key}: attribute templates missing")
                t = arr(key)
                if t is not None and not np.all(np.isfinite(t)):
                    problems.append(f"{key}: non-finite values")
                pkey = f"text/{s}/per_template"
                if pkey in f:  # optional node
                    pt = f[pkey]
                    try:
                        n_tpl = len(json.loads(_str(ds_.attrs.get("templates", "[]"))))
                    except json.JSONDecodeError:
                        n_tpl = None
                        problems.append(f"{key}: attribute templates is not JSON")
                    if pt.dtype != np.float32 or pt.ndim != 3:
                        problems.append(f"{pkey}: expected float32 [C, M, d], got {pt.dtype} {pt.shape}")
                    elif pt.shape[0] != ds_.shape[0] or pt.shape[2] != ds_.shape[1] or pt.shape[1] != n_tpl:
                        problems.append(
                            f"{pkey}: shape {pt.shape} does not match {ds_.shape[0]} classes, "
                            f"{n_tpl} templates, {ds_.shape[1]}-d"
                        )
                    if pkey in nonfinite:
                        problems.append(f"{pkey}: non-finite values")
            dt = _str(f.attrs.get("default_templates", ""))
            if dt and dt not in f["text"]:
                problems.append(f"default_templates '{dt}' has no text/{dt}/features")
        n_split = {}
        for s in f["splits"] if "splits" in f else []:
            base = f"splits/{s}"
            missing = [k for k in ("features", "labels", "index") if k not in f[base]]
            if missing:
                problems.append(f"{base}: missing {', '.join(missing)}")
                continue
            fe, la, ix = f[f"{base}/features"], f[f"{base}/labels"], f[f"{base}/index"]
            if fe.ndim != 3 or fe.dtype != np.float16:
                problems.append(f"{base}/features: expected float16 [n, V, d], got {fe.dtype} {fe.shape}")
                continue
            if d is not None and fe.shape[2] != d:
                problems.append(f"{base}/features: dimension {fe.shape[2]} differs from the text features' {d}")
            try:
                views = json.loads(_str(fe.attrs.get("views", "")))
                if len(views) != fe.shape[1]:
                    problems.append(f"{base}/features: {fe.shape[1]} views but attribute views lists {len(views)}")
            except json.JSONDecodeError:
                problems.append(f"{base}/features: attribute views missing or not JSON")
            n = fe.shape[0]
            n_split[s] = n
            if la.shape != (n,) or ix.shape != (n,):
                problems.append(f"{base}: labels/index shapes {la.shape}/{ix.shape} do not match {n} rows")
            lab = arr(f"{base}/labels")
            if lab is not None and C is not None and len(lab) and (lab.min() < 0 or lab.max() >= C):
                problems.append(f"{base}/labels: class ids outside 0..{C - 1}")
            idx = arr(f"{base}/index")
            if idx is not None and len(idx) and idx.min() < 0:
                problems.append(f"{base}/index: negative manifest rows")
            if f"{base}/features" in nonfinite:
                problems.append(f"{base}/features: non-finite values")
        for g in f["fewshot"] if "fewshot" in f else []:
            if not GROUP_RE.match(g):
                problems.append(f"fewshot/{g}: name does not match shot_<K>-seed_<S>")
            for part in ("train", "val"):
                key = f"fewshot/{g}/{part}"
                if key not in f:
                    problems.append(f"{key} missing")
                    continue
                pos = arr(key)
                if pos is None:
                    continue
                if part not in n_split:
                    if len(pos):
                        problems.append(f"{key}: points into splits/{part}, which does not exist")
                    continue
                if len(pos) and (pos.min() < 0 or pos.max() >= n_split[part]):
                    problems.append(f"{key}: row positions outside 0..{n_split[part] - 1}")
    return problems
