"""Datasets resolved against a data root: image paths, labels, classes, templates.

`load_dataset(name_or_path, data_root=None, *, download=False, cache_root=None)`
accepts:

- a registered name or alias (`cmm-cache datasets`): the manifest's split
  source is resolved under ``<data root>/<folder>`` (CoOp layout);
- ``tiny``: a synthetic set generated once under ``<cache-dir>/data/tiny/``
  (needs no data root);
- a path to a manifest ``.json`` written by a user (same schema);
- an image folder: one sub-folder per class (or ``train/``, ``val/``,
  ``test/`` each holding one sub-folder per class);
- a ``.csv`` file with rows ``path,label[,split]`` (header optional; relative
  paths are resolved against the CSV's folder; label is a class name or an
  int).

Custom data without a split gets a seeded per-class split: 50 % train, 20 %
val, 30 % test (CoOp's own fractions for the splits it created), seed 0, at
least one image of each class in every split (so 3 images per class minimum).
A split given without val gets 20 % of each class's train images as val.
Class names: folder names / CSV label names (underscores become spaces, as
CoOp prompts them), or a class-names file (``classnames.txt`` beside the data,
or `classnames_file=`): one name per line in label order, or ``key name`` lines
mapping a folder name / label to a name (CoOp's ImageNet ``classnames.txt``
format).

Registered names win over a same-named folder in the working directory; write
``./dtd`` to mean the folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import manifests as _mf
from . import paths as _paths
from .errors import CmmError
from .fewshot import draw as _draw
from .fewshot import load_published
from .paths import IMAGE_EXTENSIONS, is_image_file, is_user_data

IMAGE_EXTS = IMAGE_EXTENSIONS
SPLIT_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
SPLIT_SEED = 0
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
TINY_VERSION = 1
DOWNLOAD_BASE_ENV = "CMM_DOWNLOAD_BASE"
ARCHIVE_EXTS = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_FIRST_MISSING = 5


@dataclass
class SplitList:
    """One split in the manifest's split-list order: absolute image paths and int64 labels."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    """A dataset ready for extraction.

    - `splits`: split name -> SplitList; "train", "val", "test" for ordinary
      datasets, only "test" for shift sets.
    - `fewshot(shots, seed)` -> (train_rows, val_rows): int64 positions into
      `splits["train"]` / `splits["val"]` (published indices where shipped,
      else a seeded draw of K per class from train and min(K, 4) from val).
    - `templates`: template-set name -> list of templates containing "{}".
    - `wnids`: WordNet ids (ImageNet family only); `imagenet_index`: for shift
      sets, each class's index among the 1000 ImageNet classes.
    - `manifest`: the resolved manifest (dict); `layout` / `get_hint`: text
      for error messages; `warnings`: things a user should hear about (e.g. a
      split of unexpected size).
    """

    name: str
    classnames: list[str]
    templates: dict[str, list[str]]
    default_templates: str
    splits: dict[str, SplitList]
    manifest_sha256: str
    wnids: list[str] | None = None
    imagenet_index: list[int] | None = None
    root: Path | None = None
    fewshot_indices: dict = field(default_factory=dict)  # (K, seed) -> (train_rows, val_rows), published ones
    manifest: dict = field(default_factory=dict, repr=False)
    layout: str = ""
    get_hint: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def is_shift(self) -> bool:
        return self.imagenet_index is not None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def is_published(self, shots: int, seed: int) -> bool:
        """True when (shots, seed) comes from a shipped index file rather than a seeded draw."""
        return (int(shots), int(seed)) in self.fewshot_indices

    def max_shots(self) -> int:
        """The largest K a seeded draw supports: every class has K train and min(K, 4) val images (0 for shift sets)."""
        if "train" not in self.splits or "val" not in self.splits:
            return 0
        tr = np.bincount(self.splits["train"].labels, minlength=self.num_classes).min()
        va = np.bincount(self.splits["val"].labels, minlength=self.num_classes).min()
        return int(tr) if va >= min(int(tr), 4) else int(min(tr, va))

    def fewshot(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        key = (int(shots), int(seed))
        if key in self.fewshot_indices:
            tr, va = self.fewshot_indices[key]
            return tr.astype(np.int64, copy=True), va.astype(np.int64, copy=True)
        if "train" not in self.splits or "val" not in self.splits:
            raise CmmError(
                f"Dataset '{self.name}' has no train/val split (a shift set is test only); few-shot subsets come "
                "from the source dataset.",
                "Fit on imagenet, then `cmm-cache eval --shift " + self.name + "`.",
            )
        return _draw(
            self.splits["train"].labels, self.splits["val"].labels, key[0], key[1], self.num_classes, self.classnames
        )

    def verify(self, rows: dict[str, np.ndarray] | None = None) -> None:
        """Raise CmmError naming how many files are missing (first few, expected layout).

        `rows`: split -> row positions to check (None for a split = all its
        rows); `rows=None` checks every row of every split.
        """
        missing: list[str] = []
        total = 0
        for split, sl in self.splits.items():
            if rows is not None and split not in rows:
                continue
            sel = None if rows is None else rows[split]
            idx = range(len(sl.paths)) if sel is None else (int(i) for i in np.asarray(sel).ravel())
            for i in idx:
                total += 1
                p = sl.paths[i]
                if not os.path.isfile(p):
                    missing.append(p)
        if missing:
            where = f" under {self.root}" if self.root else ""
            hint = "First missing:\n  " + "\n  ".join(missing[:_FIRST_MISSING])
            if len(missing) > _FIRST_MISSING:
                hint += f"\n  ... and {len(missing) - _FIRST_MISSING} more"
            if self.layout:
                hint += f"\nExpected layout{where}:\n{_indent(self.layout)}"
            if self.get_hint:
                hint += "\n" + self.get_hint
            raise CmmError(f"{len(missing)} of {total} image files of dataset '{self.name}' are missing{where}.", hint)


# ----------------------------------------------------------------------------- helpers


def _indent(text: str, pad: str = "  ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def _get_hint(m: dict) -> str:
    """Where a user gets the data (one paragraph)."""
    parts = []
    src = m.get("source") or {}
    if src.get("homepage"):
        parts.append(f"Get it from {src['homepage']}")
    if src.get("instructions"):
        parts.append(f"(layout: {src['instructions']})")
    text = " ".join(parts) + ("." if parts else "")
    if m.get("download"):
        text += " Or pass --download to fetch it from its public source."
    if m.get("download_note"):
        text += " " + m["download_note"]
    return text.strip()


def _is_image(name: str) -> bool:
    return is_image_file(name)


def _list_images(d: Path, recursive: bool = False) -> list[str]:
    """Image file names under d (relative to d, '/'-separated), sorted."""
    if recursive:
        out = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            rel = os.path.relpath(dirpath, d)
            for f in filenames:
                if _is_image(f):
                    out.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
        return sorted(out)
    with os.scandir(d) as it:
        return sorted(e.name for e in it if _is_image(e.name) and e.is_file())


def _digest(splits: dict[str, tuple[list[str], np.ndarray]]) -> bytes:
    """Bytes identifying the resolved split lists (relative paths + labels) for the manifest hash."""
    h = hashlib.sha256()
    for s in sorted(splits):
        rel, lab = splits[s]
        h.update(s.encode() + b"\0")
        h.update("\n".join(rel).encode())
        h.update(np.asarray(lab, dtype=np.int64).tobytes())
    return h.digest()


def _read_json_maybe_gz(path: Path):
    import gzip

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def _prompt_name(raw: str) -> str:
    return raw.replace("_", " ").strip()


def _need_root(m: dict, data_root) -> Path:
    root = _paths.data_root(data_root)
    if root is None:
        raise CmmError(
            f"Dataset '{m['name']}' is read from a data root, and none was given.",
            f"Pass --data-root DIR or set CMM_DATA_ROOT (Python: data_root=...) to the folder that holds "
            f"'{m['folder']}/':\n{_indent(m['layout'])}\n{_get_hint(m)}",
        )
    return Path(os.path.abspath(root))  # split paths are absolute even for a relative --data-root


def _folder_missing(m: dict, folder: Path) -> CmmError:
    return CmmError(
        f"Dataset folder for '{m['name']}' not found: {folder}",
        f"Expected layout under the data root:\n{_indent(m['layout'])}\n{_get_hint(m)}",
    )


# ----------------------------------------------------------------------------- split sources


def _split_shipped(m, base: Path):
    data = _read_json_maybe_gz(_mf.data_file(m, m["split_source"]["file"]))
    return {s: (list(v["paths"]), np.asarray(v["labels"], dtype=np.int64)) for s, v in data.items()}


def _split_coop_file(m, folder: Path):
    src = m["split_source"]
    f = folder / src["filename"]
    if not f.is_file():
        raise CmmError(
            f"The CoOp split file for '{m['name']}' is not shipped with cmm-cache and was not found at {f}.",
            f"Download {src['filename']} from {src.get('url', 'the CoOp repository (DATASETS.md)')} and put it at "
            f"{f}.\n"
            f"Expected layout under the data root:\n{_indent(m['layout'])}",
        )
    try:
        data = json.loads(f.read_text())
        return {
            s: ([r[0] for r in data[s]], np.asarray([int(r[1]) for r in data[s]], dtype=np.int64))
            for s in ("train", "val", "test")
        }
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise CmmError(
            f"{f} is not a CoOp split file ({{train, val, test}}: [[path, label, classname], ...]): {e}"
        ) from e


def _split_fgvc(m, folder: Path):
    src = m["split_source"]
    cf = folder / src["classes_file"]
    need = [cf] + [folder / v for v in src["files"].values()]
    absent = [p for p in need if not p.is_file()]
    if absent:
        raise CmmError(
            f"FGVC-Aircraft's official split lists are missing: {', '.join(str(p) for p in absent)}",
            "They come with the archive (its data/ folder). Expected layout under the data "
            f"root:\n{_indent(m['layout'])}\n{_get_hint(m)}",
        )
    variants = [ln.strip() for ln in cf.read_text().splitlines() if ln.strip()]
    lab = {v: i for i, v in enumerate(variants)}
    if variants != m.get("coop_classnames", variants):
        raise CmmError(
            f"{cf} does not list the 100 FGVC-Aircraft variants the manifest expects (different order or names)."
        )
    out = {}
    for split, fname in src["files"].items():
        rel, labels = [], []
        for ln in (folder / fname).read_text().splitlines():
            ln = ln.strip()
            if not ln:
                continue
            img, variant = ln.split(" ", 1)
            if variant not in lab:
                raise CmmError(f"{folder / fname}: unknown variant {variant!r}")
            rel.append(f"{img}.jpg")
            labels.append(lab[variant])
        out[split] = (rel, np.asarray(labels, dtype=np.int64))
    return out


def _check_pool(m, splits, where: Path):
    """The published indices must point at the images they were drawn as."""
    pool = _read_json_maybe_gz(_mf.data_file(m, m["split_source"]["pool"]))
    bad, total, example = 0, 0, None
    for part, p in pool.items():
        rel = splits[part][0]
        for i, path in zip(p["index"], p["paths"]):
            total += 1
            if i >= len(rel) or rel[i] != path:
                bad += 1
                if example is None:
                    example = f"{part}[{i}]: expected {path}, found {rel[i] if i < len(rel) else '(past the end)'}"
    if bad:
        raise CmmError(
            f"The split lists of '{m['name']}' read from {where} differ from those the published few-shot indices "
            f"were drawn from ({bad} of {total} positions differ, e.g. {example}).",
            f"Use the original file: {m['split_source'].get('url', m['split_source'].get('origin', ''))}",
        )


def _imagenet_rest_is_val(rel: str, frac: float) -> bool:
    h = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:4], "big")
    return h % 1000 < round(frac * 1000)


def _list_class_folders(root: Path, keys) -> tuple[list[str], list[int], list[str]]:
    """Images of `root/<key>/` for each class key, in key order: (relative paths, labels, absent keys)."""
    rel, labels, absent = [], [], []
    for c, k in enumerate(keys):
        d = root / k
        if not d.is_dir():
            absent.append(k)
            continue
        names = _list_images(d)
        rel += [f"{k}/{n}" for n in names]
        labels += [c] * len(names)
    return rel, labels, absent


def _split_imagenet(m, folder: Path):
    src = m["split_source"]
    wnids = m["wnids"]
    img = folder / m["image_dir"]
    train_dir, val_dir = img / "train", img / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise CmmError(
                f"ImageNet folder not found: {d}",
                f"Expected layout under the data root:\n{_indent(m['layout'])}\n{_get_hint(m)}",
            )
    with np.load(_mf.data_file(m, src["pool"])) as z:
        pool = {
            part: [f"{wnids[c]}/{wnids[c]}_{n}.JPEG" for c, n in zip(z[f"{part}_class"], z[f"{part}_number"])]
            for part in ("train", "val")
        }
        pool_lab = {part: z[f"{part}_class"].astype(np.int64) for part in ("train", "val")}
    in_pool = set(pool["train"]) | set(pool["val"])
    rest = {"train": ([], []), "val": ([], [])}
    frac = float(src.get("rest_val_fraction", 0.2))
    for c, w in enumerate(wnids):
        d = train_dir / w
        if not d.is_dir():
            continue  # verify() reports the pool images of a missing class folder
        for name in _list_images(d):
            rel = f"{w}/{name}"
            if rel in in_pool:
                continue
            part = "val" if _imagenet_rest_is_val(rel, frac) else "train"
            rest[part][0].append(rel)
            rest[part][1].append(c)
    out = {}
    for part in ("train", "val"):
        out[part] = (
            pool[part] + rest[part][0],
            np.concatenate([pool_lab[part], np.asarray(rest[part][1], dtype=np.int64)]),
        )
    test_rel, test_lab, absent = _list_class_folders(val_dir, wnids)
    if absent:
        raise CmmError(
            f"ImageNet's validation folder {val_dir} lacks {len(absent)} of 1000 class folders (e.g. "
            f"{', '.join(absent[:3])}).",
            "The official val images must be arranged into one folder per WordNet id "
            "(images/val/n01440764/*.JPEG ...).\n"
            f"Expected layout under the data root:\n{_indent(m['layout'])}",
        )
    out["test"] = (test_rel, np.asarray(test_lab, dtype=np.int64))
    # train/val paths are relative to images/train, test to images/val
    return out, {"train": train_dir, "val": train_dir, "test": val_dir}


def _split_class_folders(m, folder: Path):
    src = m["split_source"]
    d = folder / m.get("image_dir", "")
    if not d.is_dir():
        raise _folder_missing(m, d)
    keys = m["wnids"] if src.get("class_dirs", "wnid") == "wnid" else [str(i) for i in m["imagenet_index"]]
    rel, labels, absent = _list_class_folders(d, keys)
    if absent:
        raise CmmError(
            f"{len(absent)} of {len(keys)} class folders of '{m['name']}' are missing in {d} (e.g. "
            f"{', '.join(absent[:5])}).",
            f"Expected layout under the data root:\n{_indent(m['layout'])}\n{_get_hint(m)}",
        )
    return {src.get("split", "test"): (rel, np.asarray(labels, dtype=np.int64))}


# ----------------------------------------------------------------------------- tiny (synthetic)


def _tiny_image(c: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One small RGB image of class c: a coloured shape / pattern on a noisy grey background."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = rng.integers(90, 150, size=(size, size, 1)) + rng.integers(-15, 16, size=(size, size, 3))
    img = img.astype(np.float64)
    jitter = rng.integers(-25, 26, size=3)
    cy, cx = rng.integers(size // 3, 2 * size // 3 + 1, size=2)
    if c == 0:  # red square
        h = rng.integers(size // 5, size // 3)
        mask = (abs(yy - cy) <= h) & (abs(xx - cx) <= h)
        colour = (230, 30, 30)
    elif c == 1:  # green circle
        r = rng.integers(size // 5, size // 3)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = (30, 210, 40)
    elif c == 2:  # blue stripes
        period = rng.integers(4, 7)
        mask = ((yy + rng.integers(0, period)) // (period // 2 or 1)) % 2 == 0
        colour = (30, 50, 230)
    elif c == 3:  # yellow cross
        t = rng.integers(2, 4)
        mask = (abs(yy - cy) <= t) | (abs(xx - cx) <= t)
        colour = (235, 225, 30)
    else:  # purple checkerboard (and any further class: a shifted hue)
        cell = rng.integers(3, 6)
        mask = ((yy // cell) + (xx // cell)) % 2 == 0
        colour = (150, 40, 190) if c == 4 else tuple(int(v) for v in (np.array([60, 200, 200]) + 37 * c) % 256)
    img[mask] = np.asarray(colour) + jitter
    return np.clip(img, 0, 255).astype(np.uint8)


def _tiny_files(m) -> list[tuple[str, int, str]]:
    """(split, class, relative path) for every tiny image, in split-list order."""
    spec = m["split_source"]
    out = []
    for split in ("train", "val", "test"):
        for c, name in enumerate(m["classnames"]):
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            for n in range(spec["per_class"][split]):
                out.append((split, c, f"{split}/{c:02d}_{slug}/{n:03d}.png"))
    return out


def ensure_tiny(m: dict | None = None, cache_root=None) -> Path:
    """Generate the tiny images under <cache-dir>/data/tiny/ unless they are all there; return that folder.

    Written to a temporary folder and renamed into place, so a half-written set
    is never trusted; two processes racing both end with the same complete set.
    """
    from PIL import Image

    m = m or _mf.get_manifest("tiny")
    spec = m["split_source"]
    base = _paths.cache_dir(cache_root) / "data" / "tiny"
    files = _tiny_files(m)
    stamp = {"version": TINY_VERSION, "spec": spec, "classnames": m["classnames"]}
    marker = base / ".complete.json"
    try:
        if json.loads(marker.read_text()) == stamp and all((base / f).is_file() for _, _, f in files):
            return base
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        pass
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-partial-", dir=base.parent))
    try:
        size, seed = int(spec["image_size"]), int(spec["seed"])
        split_id = {"train": 0, "val": 1, "test": 2}
        for split, c, rel in files:
            n = int(Path(rel).stem)
            rng = np.random.default_rng([seed, split_id[split], c, n])
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_tiny_image(c, rng, size)).save(p, format="PNG")
        (tmp / ".complete.json").write_text(json.dumps(stamp))
        if base.exists():
            old = Path(tempfile.mkdtemp(prefix=".tiny-old-", dir=base.parent))
            try:
                os.replace(base, old / "tiny")
            except FileNotFoundError:
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, base)
        except OSError:
            if not (base / ".complete.json").is_file():  # someone else won the race with a complete set
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def _load_tiny(m, cache_root) -> Dataset:
    base = ensure_tiny(m, cache_root)
    splits, rel_lists = {}, {}
    for split in ("train", "val", "test"):
        rows = [(c, rel) for s, c, rel in _tiny_files(m) if s == split]
        rel_lists[split] = ([r for _, r in rows], np.asarray([c for c, _ in rows], dtype=np.int64))
        splits[split] = SplitList([str(base / r) for _, r in rows], rel_lists[split][1])
    return _make(
        m,
        splits,
        rel_lists,
        base,
        layout=m.get("layout", ""),
        get_hint="It is generated on demand; delete the folder to regenerate it.",
    )


# ----------------------------------------------------------------------------- custom data


def _read_classnames_file(f: Path, keys: list[str]) -> list[str]:
    """Names for `keys` (folder names / label strings, in label order) from a class-names file."""
    lines = [ln.strip() for ln in Path(f).read_text(encoding="utf-8").splitlines() if ln.strip()]
    mapping = {}
    for ln in lines:
        parts = ln.split(None, 1)
        if len(parts) == 2:
            mapping[parts[0]] = parts[1].strip()
    if keys and all(k in mapping for k in keys):
        return [mapping[k] for k in keys]
    if len(lines) == len(keys):
        return lines
    raise CmmError(
        f"Class-names file {f} has {len(lines)} lines for {len(keys)} classes.",
        "Write one name per line in label order, or 'key name' lines where key is the folder name / label.",
    )


def _seeded_split(
    labels: np.ndarray, num_classes: int, seed: int, classnames, parts=("train", "val", "test"), fractions=None
):
    """Per-class seeded split of row positions; every class gets at least one row in every part."""
    fractions = fractions or [SPLIT_FRACTIONS[p] for p in parts]
    out = {p: [] for p in parts}
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < len(parts):
            raise CmmError(
                f"Class '{classnames[c]}' has {len(rows)} image(s); a seeded {'/'.join(parts)} split needs at least "
                f"{len(parts)} per class.",
                "Add images, or give the split yourself (train/val/test sub-folders, or a split column in the CSV).",
            )
        rows = rows[np.random.default_rng([seed, c]).permutation(len(rows))]
        n = len(rows)
        counts = [max(1, int(round(f * n))) for f in fractions[:-1]]
        while sum(counts) > n - 1:  # keep at least one for the last part
            counts[int(np.argmax(counts))] -= 1
        start = 0
        for p, k in zip(parts[:-1], counts):
            out[p].append(rows[start : start + k])
            start += k
        out[parts[-1]].append(rows[start:])
    return {p: np.sort(np.concatenate(v)) for p, v in out.items()}


def _custom_manifest(name: str, classnames: list[str], source: dict) -> dict:
    m = {
        "schema": _mf.SCHEMA,
        "name": name,
        "title": f"custom: {name}",
        "aliases": [],
        "kind": "custom",
        "classnames": classnames,
        "num_classes": len(classnames),
        "templates": {"coop": ["a photo of a {}."], "clip": _mf.get_manifest("imagenet")["templates"]["clip"]},
        "default_templates": "coop",
        "split_source": source,
        "fewshot": None,
        "download": None,
        "license": "yours",
        "attribution": [],
    }
    return m


def _assemble_custom(
    name, keys, rel, labels, split_of, base: Path, classnames_file, layout, source, seed, explicit_names=None
):
    """Common tail of folder/CSV loading: names, splits (given or seeded), Dataset."""
    labels = np.asarray(labels, dtype=np.int64)
    if explicit_names is not None:
        names = explicit_names
    elif classnames_file is not None:
        names = _read_classnames_file(classnames_file, keys)
    else:
        names = [_prompt_name(k) for k in keys]
    if len(set(names)) != len(names):
        raise CmmError(f"Class names of '{name}' are not unique after cleaning: {names}")
    C = len(names)
    if split_of is None:
        parts = _seeded_split(labels, C, seed, names)
        source = {**source, "split": "seeded", "seed": seed, "fractions": SPLIT_FRACTIONS}
    else:
        split_of = np.asarray(split_of)
        unknown = sorted(set(split_of) - {"train", "val", "test"})
        if unknown:
            raise CmmError(f"Unknown split name(s) {unknown} in '{name}'; use train, val or test.")
        if not (split_of == "train").any() or not (split_of == "test").any():
            raise CmmError(
                f"'{name}' gives a split but has no {'train' if not (split_of == 'train').any() else 'test'} images."
            )
        parts = {p: np.flatnonzero(split_of == p) for p in ("train", "val", "test")}
        if len(parts["val"]) == 0:
            tr = parts["train"]
            sub = _seeded_split(labels[tr], C, seed, names, parts=("train", "val"), fractions=[0.8, 0.2])
            parts["train"], parts["val"] = tr[sub["train"]], tr[sub["val"]]
            source = {**source, "split": "given; val = seeded 20% of train", "seed": seed}
        else:
            source = {**source, "split": "given"}
    m = _custom_manifest(name, names, source)
    m["layout"] = layout
    splits, rel_lists = {}, {}
    for p, r in parts.items():
        rel_lists[p] = ([rel[i] for i in r], labels[r])
        splits[p] = SplitList([str(base / rel[i]) for i in r], labels[r])
    return _make(m, splits, rel_lists, base, layout=layout, get_hint="")


def _load_folder(root: Path, classnames_file=None, seed: int = SPLIT_SEED) -> Dataset:
    root = root.expanduser().resolve()
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classnames_file is None and (root / "classnames.txt").is_file():
        classnames_file = root / "classnames.txt"
    given = [d for d in subdirs if d.lower() in SPLIT_ALIASES]
    layout = (
        f"{root.name}/\n|-- <class name>/   (images: {', '.join(sorted(IMAGE_EXTS))})\n|-- ...\n(or train/, "
        "val/, test/ each holding class folders)"
    )
    rel, labels, split_of = [], [], []
    if given and set(given) == set(subdirs):
        keys = sorted(
            {c for d in given for c in os.listdir(root / d) if (root / d / c).is_dir() and not c.startswith(".")}
        )
        lab = {k: i for i, k in enumerate(keys)}
        for d in given:
            for k in sorted(os.listdir(root / d)):
                if k not in lab:
                    continue
                for n in _list_images(root / d / k, recursive=True):
                    rel.append(f"{d}/{k}/{n}")
                    labels.append(lab[k])
                    split_of.append(SPLIT_ALIASES[d.lower()])
    else:
        keys = subdirs
        for c, k in enumerate(keys):
            names = _list_images(root / k, recursive=True)
            if not names:
                raise CmmError(f"Class folder {root / k} holds no images ({', '.join(sorted(IMAGE_EXTS))}).")
            rel += [f"{k}/{n}" for n in names]
            labels += [c] * len(names)
        split_of = None
    if not keys:
        raise CmmError(f"{root} has no class sub-folders.", f"An image-folder dataset looks like:\n{_indent(layout)}")
    src = {"type": "image_folder", "dir": str(root)}
    return _assemble_custom(root.name, keys, rel, labels, split_of, root, classnames_file, layout, src, seed)


def _load_csv(f: Path, classnames_file=None, seed: int = SPLIT_SEED) -> Dataset:
    f = f.expanduser().resolve()
    base = f.parent
    if classnames_file is None and (base / "classnames.txt").is_file():
        classnames_file = base / "classnames.txt"
    with open(f, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(x.strip() for x in r)]
    if rows and rows[0][0].strip().lower() in ("path", "image", "file", "filepath", "filename", "impath"):
        rows = rows[1:]
    if not rows:
        raise CmmError(f"{f} holds no rows (expected path,label[,split]).")
    bad = [i for i, r in enumerate(rows) if len(r) < 2 or len(r) > 3]
    if bad:
        raise CmmError(f"{f}: row {bad[0] + 1} has {len(rows[bad[0]])} columns; expected path,label[,split].")
    rel = [r[0].strip() for r in rows]
    raw = [r[1].strip() for r in rows]
    splits_col = [SPLIT_ALIASES.get(r[2].strip().lower(), r[2].strip().lower()) if len(r) == 3 else "" for r in rows]
    if any(splits_col) and not all(splits_col):
        raise CmmError(f"{f}: some rows give a split and some do not; give it for every row or for none.")
    split_of = splits_col if all(splits_col) else None
    explicit = None
    if all(re.fullmatch(r"-?\d+", x) for x in raw):
        labels = [int(x) for x in raw]
        if min(labels) < 0:
            raise CmmError(f"{f}: negative label {min(labels)}.")
        C = max(labels) + 1
        keys = [str(i) for i in range(C)]
        if classnames_file is None:
            explicit = [f"class {i}" for i in range(C)]
    else:
        if classnames_file is not None:
            lines = [ln.strip() for ln in Path(classnames_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
            firsts = [ln.split(None, 1)[0] for ln in lines]
            keys = firsts if set(raw) <= set(firsts) else lines
            if not set(raw) <= set(keys):
                raise CmmError(f"{f}: labels {sorted(set(raw) - set(keys))[:5]} are not in {classnames_file}.")
        else:
            keys = sorted(set(raw))
        lab = {k: i for i, k in enumerate(keys)}
        labels = [lab[x] for x in raw]
    for i, p in enumerate(rel):
        rel[i] = p if os.path.isabs(p) else os.path.normpath(p)
    layout = f"{f.name}: rows 'path,label[,split]'; relative paths are resolved against {base}"
    src = {"type": "csv", "file": str(f)}
    ds = _assemble_custom(
        f.stem, keys, rel, labels, split_of, base, classnames_file, layout, src, seed, explicit_names=explicit
    )
    return ds


# ----------------------------------------------------------------------------- assembly


def _make(m, splits, rel_lists, root, layout, get_hint, published=None, warnings=None) -> Dataset:
    for s, sl in splits.items():
        if len(sl.labels) and (sl.labels.min() < 0 or sl.labels.max() >= len(m["classnames"])):
            raise CmmError(f"Split '{s}' of '{m['name']}' has labels outside 0..{len(m['classnames']) - 1}.")
    if "train" in splits and "val" in splits:
        both = set(splits["train"].paths) & set(splits["val"].paths)
        if both:
            raise CmmError(
                f"{len(both)} images of '{m['name']}' are in both train and val (e.g. {next(iter(both))}); they must "
                "be disjoint."
            )
    return Dataset(
        name=m["name"],
        classnames=list(m["classnames"]),
        templates={k: list(v) for k, v in m["templates"].items()},
        default_templates=m["default_templates"],
        splits=splits,
        manifest_sha256=_mf.manifest_sha256(m, _digest(rel_lists)),
        wnids=list(m["wnids"]) if m.get("wnids") else None,
        imagenet_index=list(m["imagenet_index"]) if m.get("imagenet_index") is not None else None,
        root=Path(root) if root else None,
        fewshot_indices=published or {},
        manifest=_mf.public(m),
        layout=layout,
        get_hint=get_hint,
        warnings=warnings or [],
    )


def load_manifest_dataset(m: dict, data_root=None, *, download: bool = False, cache_root=None) -> Dataset:
    """A Dataset from a validated manifest (registered or user-written)."""
    src = m["split_source"]
    t = src["type"]
    if t == "synthetic":
        return _load_tiny(m, cache_root)
    if t in ("image_folder", "csv"):  # a user manifest pointing at custom data, with its own names/templates
        p = Path(m.get("_base", ".")) / (src.get("dir") or src.get("file"))
        ds = _load_folder(p) if t == "image_folder" else _load_csv(p)
        if len(ds.classnames) != len(m["classnames"]):
            raise CmmError(
                f"Manifest '{m['name']}' names {len(m['classnames'])} classes; its data has {len(ds.classnames)}."
            )
        ds.name, ds.classnames, ds.templates, ds.default_templates = (
            m["name"],
            list(m["classnames"]),
            m["templates"],
            m["default_templates"],
        )
        ds.manifest = _mf.public(m)
        rel = {s: ([os.path.relpath(p, ds.root) for p in sl.paths], sl.labels) for s, sl in ds.splits.items()}
        ds.manifest_sha256 = _mf.manifest_sha256(m, _digest(rel))
        return ds
    root = _need_root(m, data_root)
    folder = root / m["folder"]
    if download and not (folder / m.get("image_dir", "")).exists():
        download_dataset(m, root)
    if not folder.is_dir():
        raise _folder_missing(m, folder)
    image_base = {}
    if t == "shipped":
        rel = _split_shipped(m, folder)
    elif t == "coop_split_file":
        rel = _split_coop_file(m, folder)
        _check_pool(m, rel, folder / src["filename"])
    elif t == "fgvc_variant_files":
        rel = _split_fgvc(m, folder)
        _check_pool(m, rel, folder)
    elif t == "imagenet":
        rel, image_base = _split_imagenet(m, folder)
    elif t == "class_folders":
        rel = _split_class_folders(m, folder)
    else:  # pragma: no cover - validate_manifest rejects unknown types
        raise CmmError(f"Unknown split source {t!r}")
    warnings = []
    for s, n in (m.get("split_sizes") or {}).items():
        if s in rel and len(rel[s][0]) != n:
            warnings.append(f"{m['name']}: split '{s}' has {len(rel[s][0])} images; the manifest expects {n}.")
    default_base = folder / m.get("image_dir", "")
    splits = {}
    for s, (r, lab) in rel.items():
        b = str(image_base.get(s, default_base))
        splits[s] = SplitList([os.path.join(b, x) for x in r], np.asarray(lab, dtype=np.int64))
    published = {}
    fs = m.get("fewshot")
    if fs and fs.get("file"):
        published = load_published(_mf.data_file(m, fs["file"]))
    return _make(
        m,
        splits,
        rel,
        folder,
        layout=m.get("layout", ""),
        get_hint=_get_hint(m),
        published=published,
        warnings=warnings,
    )


def load_dataset(
    name_or_path: str,
    data_root=None,
    *,
    download: bool = False,
    cache_root=None,
    classnames_file=None,
    split_seed: int = SPLIT_SEED,
) -> Dataset:
    """Resolve a registered name/alias, a manifest file, an image folder or a CSV into a Dataset."""
    s = str(name_or_path)
    canon = _mf.resolve_name(s)
    looks_like_path = is_user_data(s)
    if canon is not None and not looks_like_path:
        return load_manifest_dataset(_mf.get_manifest(canon), data_root, download=download, cache_root=cache_root)
    p = Path(s).expanduser()
    if p.is_dir():
        return _load_folder(p, classnames_file, split_seed)
    if p.is_file() and p.suffix.lower() == ".json":
        return load_manifest_dataset(_mf.load_manifest_file(p), data_root, download=download, cache_root=cache_root)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _load_csv(p, classnames_file, split_seed)
    if looks_like_path:
        raise CmmError(
            f"Dataset path not found: {p}",
            "Give a registered dataset name, an image folder, a .csv or a manifest .json.",
        )
    _mf.get_manifest(s)  # raises the 'unknown dataset' error listing the valid names
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- download


def _resolve_url(url: str) -> str:
    """Apply the mirror override `$CMM_DOWNLOAD_BASE` (a URL or a local folder): base + archive file name."""
    base = os.environ.get(DOWNLOAD_BASE_ENV)
    if not base:
        return url
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if "://" not in base:
        return (Path(base).expanduser().resolve() / name).as_uri()
    return base.rstrip("/") + "/" + name


def _fetch(url: str, dest: Path, console=None) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = console or Console(stderr=True)
    try:
        resp = urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:
        raise CmmError(
            f"Could not download {url}: {e}",
            f"Check the address, or set {DOWNLOAD_BASE_ENV} to a mirror folder/URL holding the archive.",
        ) from e
    total = int(resp.headers.get("Content-Length") or 0) or None
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    with (
        resp,
        open(dest, "wb") as out,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as prog,
    ):
        task = prog.add_task(f"downloading {name}", total=total)
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            prog.update(task, advance=len(chunk))
    return dest


def _safe_extract(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if n.startswith("/") or ".." in Path(n).parts:
                    raise CmmError(f"Refusing to extract {archive}: unsafe member path {n!r}.")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for mem in t.getmembers():
                if mem.name.startswith("/") or ".." in Path(mem.name).parts or mem.issym() or mem.islnk():
                    raise CmmError(f"Refusing to extract {archive}: unsafe member {mem.name!r}.")
            t.extractall(into, filter="data")
    else:
        raise CmmError(f"{archive} is neither a zip nor a tar archive.")


def download_dataset(manifest, data_root, *, console=None) -> Path:
    """Fetch a dataset from its official public source into `<data_root>/<folder>` (CoOp layout).

    Each archive is streamed to a temporary file, extracted into a temporary
    folder beside the target and moved into place only when complete: a
    killed download never leaves a folder a later run would trust.
    `$CMM_DOWNLOAD_BASE` (a folder or URL) replaces the host, for mirrors and
    offline tests. Datasets without a public source raise CmmError saying
    where to get them.
    """
    m = _mf.get_manifest(manifest) if isinstance(manifest, str) else manifest
    dl = m.get("download")
    if not dl or not dl.get("archives"):
        raise CmmError(
            f"'{m['name']}' has no public archive cmm-cache can download.",
            (_get_hint(m) + f"\nExpected layout under the data root:\n{_indent(m.get('layout', ''))}").strip(),
        )
    if data_root is None:
        raise CmmError("--download needs a data root to put the data in.", "Pass --data-root DIR or set CMM_DATA_ROOT.")
    root = Path(data_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / m["folder"]
    work = Path(tempfile.mkdtemp(prefix=f".{m['folder']}.partial-", dir=root))
    try:
        staging = work / "dataset"
        staging.mkdir()
        for i, a in enumerate(dl["archives"]):
            url = _resolve_url(a["url"])
            fname = os.path.basename(urllib.parse.urlparse(url).path) or f"archive{i}"
            got = _fetch(url, work / f"dl{i}-{fname}", console)
            if a.get("sha256"):
                h = hashlib.sha256(got.read_bytes()).hexdigest()
                if h != a["sha256"]:
                    raise CmmError(f"Checksum mismatch for {url}: got {h}, expected {a['sha256']}.")
            is_archive = zipfile.is_zipfile(got) or tarfile.is_tarfile(got)
            if not is_archive and fname.lower().endswith(ARCHIVE_EXTS):
                raise CmmError(
                    f"{url} is not a readable archive (damaged or incomplete download).",
                    "Run again, or fetch it by hand.",
                )
            if not is_archive:
                os.replace(got, staging / fname)  # a plain file (e.g. a label .mat)
                continue
            ex = work / f"ex{i}"
            _safe_extract(got, ex)
            got.unlink()
            if a.get("nested"):
                inner = ex / a["nested"]
                ex2 = work / f"ex{i}n"
                _safe_extract(inner, ex2)
                ex = ex2
            src = ex / a["strip"] if a.get("strip") else ex
            if not src.is_dir():
                raise CmmError(f"{url} does not contain the expected folder {a.get('strip')!r}.")
            for child in src.iterdir():
                target = staging / child.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                os.replace(child, target)
        if not final.exists():
            os.replace(staging, final)  # one atomic step
        else:
            for child in staging.iterdir():  # complete entries only; existing ones are kept
                target = final / child.name
                if not target.exists():
                    os.replace(child, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


download = download_dataset  # the name the brief and the CLI use
