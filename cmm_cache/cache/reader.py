"""Reading a cache: :func:`open_cache` and the read-only :class:`Cache` view every stage-two command uses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cmm_cache.cache.lock import reader_lock, reader_unlock
from cmm_cache.cache.schema import (
    BLOCK_SUFFIX_GROUP,
    BLOCKS_GROUP,
    DAMAGED_HINT,
    SCHEMA,
    as_str,
    block_inputs_node,
    content_sha256,
    features_content_sha256,
    per_template_node,
    provenance_sha256,
    text_node,
)
from cmm_cache.cache.validate import Scan, nonfinite_problem, run_checks, summary
from cmm_cache.datasets.fewshot import GROUP_RE, group_name, parse_group
from cmm_cache.errors import CmmError


@dataclass
class Split:
    """One split held in memory: features [n, V, d] (float16), labels, index, views."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    views: list[str]


class CacheHandle:
    """One open cache file for the life of a reader: a shared lock on the file (see :mod:`.lock`) and the
    h5py file, both on the same inode, checked to be the file at the path when opened.

    Everything a :class:`Cache` reads goes through this one handle, so a file replaced at its path meanwhile
    (``extract --force``, a copy) never mixes into what it reads: the handle keeps reading the file it opened.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.f: h5py.File | None = None
        for _ in range(20):  # a file replaced between the open and the lock: open the new one
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise _no_file(self.path) from None
            except IsADirectoryError:
                raise CmmError(f"{self.path} is a folder, not a cache file.", "Pass the .h5 file.") from None
            except PermissionError as e:
                raise CmmError(f"Cannot read {self.path} ({e.strerror}).") from None
            reader_lock(fd)
            st = os.fstat(fd)
            if _same_file(self.path, st):
                try:
                    f = h5py.File(self.path, "r")
                except OSError as e:
                    reader_unlock(fd)
                    raise CmmError(
                        f"Cannot read {self.path} as an HDF5 cache ({e}).",
                        "The file is damaged or not a cmm-cache file; re-extract it with `cmm-cache extract --force`.",
                    ) from e
                if _same_vfd(f, st):
                    self.fd, self.f = fd, f
                    self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                    return
                f.close()
            reader_unlock(fd)
        raise CmmError(f"{self.path} kept being replaced while it was opened.", "Try again.")  # pragma: no cover

    @property
    def open(self) -> bool:
        return self.f is not None

    def close(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
            self.f = None
        if self.fd is not None:
            reader_unlock(self.fd)
            self.fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _no_file(path: Path) -> CmmError:
    return CmmError(
        f"No cache file at {path}.",
        "Run `cmm-cache extract --dataset NAME --backbone NAME` first, or pass --cache PATH.",
    )


def _same_file(path: Path, st: os.stat_result) -> bool:
    try:
        cur = os.stat(path)
    except OSError:
        return False
    return (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino)


def _same_vfd(f: h5py.File, st: os.stat_result) -> bool:
    """The file h5py opened is the one that was locked (where h5py tells its descriptor)."""
    try:
        vst = os.fstat(int(f.id.get_vfd_handle()))
    except Exception:
        return True
    return (vst.st_dev, vst.st_ino) == (st.st_dev, st.st_ino)


def _replaced(path: Path) -> CmmError:
    return CmmError(
        f"The cache at {path} was replaced (e.g. by `extract --force`) since this command opened it.",
        "Run the command again: it reads the new file from the start.",
    )


@dataclass
class Cache:
    """A read-only view of one cache file, checked when it was opened (:func:`open_cache`).

    Attributes are read eagerly (they are small); features are read on demand
    by :meth:`split` so a large test split is only loaded when needed. Every
    read goes through one open handle (:class:`CacheHandle`) kept until
    :meth:`close` (or the view is dropped): a file replaced at the path
    meanwhile is not what it reads. A view whose handle was closed reopens the
    path only when it is still the same file.
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
    _handle: CacheHandle | None = field(default=None, repr=False, compare=False)
    _identity: tuple | None = field(default=None, repr=False, compare=False)

    # -- the one handle
    def _file(self) -> h5py.File:
        if self._handle is None or not self._handle.open:
            h = CacheHandle(self.path)
            if self._identity is not None and h.identity != self._identity:
                h.close()
                raise _replaced(self.path)
            self._handle, self._identity = h, h.identity
        return self._handle.f

    def close(self) -> None:
        """Let go of the file (and its reader lock); a later read reopens it if it is still the same file."""
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None  # a copy in another process opens the file itself (same-file check included)
        return state

    @property
    def provenance_sha256(self) -> str:
        return provenance_sha256(self.provenance_json)

    @property
    def content_sha256(self) -> str:
        """What the cache holds, not when it was written (:func:`~cmm_cache.cache.schema.content_sha256`)."""
        return content_sha256(self.provenance)

    def content_sha256_for(self, inputs: str = "features") -> str:
        """The content hash a run records (:attr:`~cmm_cache.heads.base.Head.input`): a run on block inputs
        depends on them (:attr:`content_sha256`), a run on features only on the features
        (:func:`~cmm_cache.cache.schema.features_content_sha256`)."""
        return self.content_sha256 if inputs == "block_inputs" else features_content_sha256(self.provenance)

    @property
    def dataset_name(self) -> str:
        """The dataset's short name: the registered name, or your folder/CSV's name (``dtd10`` for
        ``extract --dataset path/to/dtd10``); the ``dataset`` attribute keeps the name as given."""
        name = self.provenance.get("dataset_resolved")
        return name if isinstance(name, str) and name else str(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def embed_dim(self) -> int:
        return int(self.text().shape[1])

    @property
    def is_shift(self) -> bool:
        return self.imagenet_index is not None

    def _read(self, key: str, what: str):
        """A node's values, a checksum failure as one clear message."""
        try:
            return self._file()[key][...]
        except OSError as e:  # fletcher32 mismatch or a truncated file
            raise CmmError(f"Cache {self.path} is damaged ({what}): {e}.", DAMAGED_HINT) from e

    def text(self, name: str | None = None) -> np.ndarray:
        """Class text features [C, d] float32 of template set `name` (default set if None)."""
        name = name or self.default_templates
        if name not in self.text_sets:
            raise CmmError(
                f"Cache {self.path} has no text features for template set '{name}'.",
                f"Available template sets: {', '.join(self.text_sets)}.",
            )
        if name not in self._text_cache:
            self._text_cache[name] = np.asarray(self._read(text_node(name), text_node(name)), dtype=np.float32)
        return self._text_cache[name]

    def has_per_template(self, name: str | None = None) -> bool:
        """Whether the optional ``text/<set>/per_template`` node exists (caches from cmm-cache >= 0.2)."""
        name = name or self.default_templates
        return per_template_node(name) in self._file()

    def text_per_template(self, name: str | None = None) -> np.ndarray:
        """Raw per-template text embeddings [C, M, d] float32 of template set `name` (optional node).

        Methods that use each template's embedding as a sample (cross-modal
        linear probing) need these; caches written before they existed lack them.
        """
        name = name or self.default_templates
        self.text(name)  # an unknown set gets its own clear message
        key = per_template_node(name)
        if key not in self._file():
            raise CmmError(
                f"Cache {self.path} has no per-template text embeddings ({key}): it was written by an "
                "older cmm-cache or another tool.",
                f"Add them with `cmm-cache extract --dataset {self.dataset} --backbone {self.backbone} "
                f"--out {self.path} --add-text` (text encoder only, the image features are kept).",
            )
        out = np.asarray(self._read(key, key), dtype=np.float32)
        bad = nonfinite_problem(key, out)
        if bad:
            raise CmmError(f"Cache {self.path} is damaged: {bad}.", DAMAGED_HINT)
        return out

    def templates(self, name: str | None = None) -> list[str]:
        name = name or self.default_templates
        return json.loads(as_str(self._file()[text_node(name)].attrs["templates"]))

    def split(self, name: str) -> Split:
        """One split's features, labels, index and views (the features checked for non-finite values)."""
        if name not in self.split_names:
            raise CmmError(
                f"Cache {self.path} has no '{name}' split.",
                f"It holds: {', '.join(self.split_names) or 'none'}.",
            )
        g = self._file()[f"splits/{name}"]
        feats = self._read(f"splits/{name}/features", f"split '{name}'")
        labels = self._read(f"splits/{name}/labels", f"split '{name}'").astype(np.int64)
        index = self._read(f"splits/{name}/index", f"split '{name}'").astype(np.int64)
        views = json.loads(as_str(g["features"].attrs.get("views", '["center"]')))
        bad = nonfinite_problem(f"splits/{name}/features", feats)
        if bad:
            raise CmmError(f"Cache {self.path} is damaged: {bad}.", DAMAGED_HINT)
        return Split(features=feats, labels=labels, index=index, views=views)

    def views(self, split: str = "train") -> list[str]:
        """The view names of a split's features (its ``views`` attr; ``["center"]`` when absent), features unread."""
        if split not in self.split_names:
            self.split(split)  # raises its clear error
        with open_h5(self.path) as f:
            return json.loads(as_str(f[f"splits/{split}/features"].attrs.get("views", '["center"]')))

    def view_recipe(self) -> dict | None:
        """How the augmented train views were made (attr ``view_recipe`` of the train features), if any."""
        with open_h5(self.path) as f:
            node = f.get("splits/train/features")
            raw = node.attrs.get("view_recipe") if node is not None else None
            return json.loads(as_str(raw)) if raw is not None else None

    # ---------------------------------------------------------------- block inputs (optional nodes)

    def has_blocks(self, split: str | None = None) -> bool:
        """Whether the cache holds the input of the image tower's last blocks (``extract --finetune-blocks``),
        for `split` or at all."""
        with open_h5(self.path) as f:
            if BLOCKS_GROUP not in f or "cut" not in f[BLOCKS_GROUP].attrs:
                return False
            return split is None or block_inputs_node(split) in f

    def blocks_hint(self) -> str:
        return (
            f"Extract the cache with block inputs: `cmm-cache extract --dataset {self.dataset} --backbone "
            f"{self.backbone} --finetune-blocks 1 --force` (1: the last block, as Lin et al.'s partial finetuning; "
            "runs fitted on this cache's features stay valid)."
        )

    def block_cut(self) -> dict:
        """The cut the block inputs come from: arch, blocks, input_shape, prefix/suffix sha256, config."""
        if not self.has_blocks():
            raise CmmError(f"Cache {self.path} holds no block inputs (blocks/, splits/<split>/block_inputs).",
                           self.blocks_hint())  # fmt: skip
        with open_h5(self.path) as f:
            try:
                cut = json.loads(as_str(f[BLOCKS_GROUP].attrs["cut"]))
            except (KeyError, json.JSONDecodeError) as e:
                msg = f"Cache {self.path}: blocks/ attribute cut is not valid JSON ({e})."
                raise CmmError(msg, DAMAGED_HINT) from e
        if not isinstance(cut, dict) or not isinstance(cut.get("config"), dict) or "input_shape" not in cut:
            raise CmmError(f"Cache {self.path}: blocks/ attribute cut lacks config or input_shape.", DAMAGED_HINT)
        return cut

    def block_weights(self) -> dict[str, np.ndarray]:
        """The weights above the cut, as extracted (float32, by name): where partial finetuning starts."""
        self.block_cut()
        with open_h5(self.path) as f:
            out = {}
            try:
                f[BLOCK_SUFFIX_GROUP].visititems(
                    lambda name, obj: (
                        out.__setitem__(name, np.asarray(obj[...], dtype=np.float32))
                        if isinstance(obj, h5py.Dataset)
                        else None
                    )
                )
            except (KeyError, OSError) as e:
                raise CmmError(f"Cache {self.path} is damaged ({BLOCK_SUFFIX_GROUP}): {e}.", DAMAGED_HINT) from e
        return out

    def block_views(self, split: str) -> list[str]:
        with open_h5(self.path) as f:
            return json.loads(as_str(f[block_inputs_node(split)].attrs.get("views", '["center"]')))

    def block_rows(self, split: str) -> int:
        with open_h5(self.path) as f:
            return int(f[block_inputs_node(split)].shape[0])

    def block_inputs(self, split: str, rows=None) -> np.ndarray:
        """float16 [m, Vb, *input_shape] block inputs of `split` (all rows, or `rows` in the order given)."""
        if not self.has_blocks(split):
            raise CmmError(f"Cache {self.path} holds no block inputs for split '{split}'.", self.blocks_hint())
        key = block_inputs_node(split)
        shape = [int(v) for v in self.block_cut()["input_shape"]]
        with open_h5(self.path) as f:
            d = f[key]
            if d.dtype != np.float16 or list(d.shape[2:]) != shape or d.ndim != 2 + len(shape):
                raise CmmError(
                    f"Cache {self.path}: {key} is {d.dtype} {list(d.shape)}, expected float16 [n, views, "
                    f"{', '.join(map(str, shape))}].",
                    DAMAGED_HINT,
                )
            try:
                if rows is None:
                    return d[...]
                rows = np.asarray(rows, dtype=np.int64)
                if rows.size and (rows.min() < 0 or rows.max() >= d.shape[0]):
                    raise CmmError(f"Cache {self.path}: rows outside {key} ({d.shape[0]} rows).", DAMAGED_HINT)
                uniq, inv = np.unique(rows, return_inverse=True)  # h5py reads increasing indices only
                return d[uniq][inv] if len(uniq) else np.zeros((0, *d.shape[1:]), d.dtype)
            except OSError as e:
                raise CmmError(f"Cache {self.path} is damaged ({key}): {e}.", DAMAGED_HINT) from e

    def iter_block_inputs(self, split: str, chunk: int = 256):
        """(start row, float16 [m, Vb, *shape]) chunks of a split's block inputs: memory stays flat."""
        n = self.block_rows(split) if self.has_blocks(split) else self.block_inputs(split).shape[0]
        key = block_inputs_node(split)
        with open_h5(self.path) as f:
            d = f[key]
            for a in range(0, n, chunk):
                try:
                    yield a, d[a : a + chunk]
                except OSError as e:
                    raise CmmError(f"Cache {self.path} is damaged ({key}): {e}.", DAMAGED_HINT) from e

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (train, val) into splits/train and splits/val for (K, seed) (ranges checked on open)."""
        if (int(shots), int(seed)) not in self.fewshot_groups:
            have = ", ".join(f"{k}-shot/seed {s}" for k, s in self.fewshot_groups) or "none"
            raise CmmError(
                f"Cache {self.path} has no few-shot subset for {shots} shots, seed {seed}.",
                f"It holds: {have}. Re-run `cmm-cache extract` with --shots/--seeds covering it.",
            )
        g = group_name(shots, seed)
        rows = {part: self._read(f"fewshot/{g}/{part}", f"fewshot/{g}").astype(np.int64) for part in ("train", "val")}
        return rows["train"], rows["val"]


class open_h5:
    """h5py.File opened read-only with errors turned into one clear message."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> h5py.File:
        if not self.path.exists():
            raise _no_file(self.path)
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
    """Open a schema-conformant cache file and check it (:mod:`cmm_cache.cache.validate`: attributes, shapes,
    dtypes, class ids, row positions, text features); refuse anything else with one clear message.

    The returned view keeps the file open (one handle, a shared reader lock) until it is closed or dropped."""
    path = Path(path)
    h = CacheHandle(path)
    try:
        f = h.f
        schema = f.attrs.get("schema", "")
        schema = as_str(schema) if isinstance(schema, (str, bytes, np.str_, np.bytes_)) else repr(schema)
        if schema != SCHEMA:
            raise CmmError(
                f"{path} is not a {SCHEMA} cache (schema attribute: {schema or 'missing'}).",
                "Only files written by `cmm-cache extract` or following docs/cache-schema.md can be read.",
            )
        scan = Scan(f)
        problems = run_checks(scan)
        if problems:
            raise CmmError(
                f"{path} does not follow schema {SCHEMA}: {summary(list(dict.fromkeys(problems)))}.",
                f"`cmm-cache cache verify {path}` lists every problem; re-extract it with `cmm-cache extract --force`.",
            )
        prov_json = as_str(f.attrs["provenance"])
        names = [as_str(x) for x in scan.small("classes/names")]
        wnids = [as_str(x) for x in f["classes/wnids"][...]] if "classes/wnids" in f else None
        inet = scan.small("classes/imagenet_index").astype(np.int64) if "classes/imagenet_index" in f else None
        text_sets = sorted(f["text"].keys())
        split_names = sorted(f["splits"].keys()) if "splits" in f else []
        groups = sorted(parse_group(k) for k in (f["fewshot"].keys() if "fewshot" in f else []) if GROUP_RE.match(k))
        cache = Cache(
            path=path,
            dataset=as_str(f.attrs["dataset"]),
            backbone=as_str(f.attrs["backbone"]),
            provenance=json.loads(prov_json),
            provenance_json=prov_json,
            default_templates=as_str(f.attrs["default_templates"]),
            classnames=names,
            wnids=wnids,
            imagenet_index=inet,
            text_sets=text_sets,
            split_names=split_names,
            fewshot_groups=groups,
            _handle=h,
            _identity=h.identity,
        )
        for t in text_sets:  # already read and checked: keep them
            cache._text_cache[t] = np.asarray(scan.data[text_node(t)], dtype=np.float32)
        return cache
    except CmmError:
        h.close()
        raise
    except (KeyError, OSError, ValueError, UnicodeDecodeError) as e:
        h.close()
        raise CmmError(
            f"{path} does not follow schema {SCHEMA}: {e}.",
            "Re-extract it with `cmm-cache extract --force`.",
        ) from e
