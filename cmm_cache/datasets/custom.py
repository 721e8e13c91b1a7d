"""Your own data: an image folder or a CSV/TSV list of images, with a given or a seeded split.

Custom data without a split gets a seeded per-class split: 50 % train, 20 %
val, 30 % test (CoOp's own fractions for the splits it created), seed 0, at
least one image of each class in every split (so 3 images per class minimum).
A split given without val gets 20 % of each class's train images as val.
Class names: folder names / CSV label names (underscores become spaces, as
CoOp prompts them), or a class-names file (``classnames.txt`` beside the data,
or `classnames_file=`): one name per line in label order, or ``key name`` lines
mapping a folder name / label to a name (CoOp's ImageNet ``classnames.txt``
format). The dataset's name is :func:`cmm_cache.datasets.names.user_data_name` of the
path: the folder's name or the file's stem.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import (
    Dataset,
    LoadOptions,
    SplitList,
    digest,
    indent,
    list_images,
    make_dataset,
    prompt_name,
)
from cmm_cache.datasets.names import user_data_name
from cmm_cache.errors import CmmError
from cmm_cache.util.paths import IMAGE_EXTENSIONS

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
_CSV_HEADERS = ("path", "image", "file", "filepath", "filename", "impath")
_EXTS = ", ".join(sorted(IMAGE_EXTENSIONS))


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


def _custom_manifest(name: str, classnames: list[str], source: dict, layout: str) -> dict:
    return {
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
        "layout": layout,
    }


def _split_parts(name, labels, split_of, names, seed, source) -> tuple[dict[str, np.ndarray], dict]:
    """Row positions per split (given, or seeded) and the split source recording how they were made."""
    C = len(names)
    if split_of is None:
        parts = _seeded_split(labels, C, seed, names)
        return parts, {**source, "split": "seeded", "seed": seed, "fractions": SPLIT_FRACTIONS}
    split_of = np.asarray(split_of)
    unknown = sorted(set(split_of) - {"train", "val", "test"})
    if unknown:
        raise CmmError(f"Unknown split name(s) {unknown} in '{name}'; use train, val or test.")
    if not (split_of == "train").any() or not (split_of == "test").any():
        raise CmmError(
            f"'{name}' gives a split but has no {'train' if not (split_of == 'train').any() else 'test'} images."
        )
    parts = {p: np.flatnonzero(split_of == p) for p in ("train", "val", "test")}
    if len(parts["val"]):
        return parts, {**source, "split": "given"}
    tr = parts["train"]
    sub = _seeded_split(labels[tr], C, seed, names, parts=("train", "val"), fractions=[0.8, 0.2])
    parts["train"], parts["val"] = tr[sub["train"]], tr[sub["val"]]
    return parts, {**source, "split": "given; val = seeded 20% of train", "seed": seed}


def _assemble(name, keys, rel, labels, split_of, base: Path, classnames_file, layout, source, seed, names=None):
    """Common tail of folder/CSV loading: names, splits (given or seeded), Dataset."""
    labels = np.asarray(labels, dtype=np.int64)
    if names is None:
        names = _read_classnames_file(classnames_file, keys) if classnames_file else [prompt_name(k) for k in keys]
    if len(set(names)) != len(names):
        raise CmmError(f"Class names of '{name}' are not unique after cleaning: {names}")
    parts, source = _split_parts(name, labels, split_of, names, seed, source)
    m = _custom_manifest(name, names, source, layout)
    splits, rel_lists = {}, {}
    for p, r in parts.items():
        rel_lists[p] = ([rel[i] for i in r], labels[r])
        splits[p] = SplitList([str(base / rel[i]) for i in r], labels[r])
    return make_dataset(m, splits, rel_lists, base, layout=layout, get_hint="")


def _folder_rows(root: Path, subdirs: list[str]):
    """(class keys, relative paths, labels, split per row or None) of an image folder."""
    given = [d for d in subdirs if d.lower() in SPLIT_ALIASES]
    rel, labels, split_of = [], [], []
    if not (given and set(given) == set(subdirs)):  # one sub-folder per class
        for c, k in enumerate(subdirs):
            names = list_images(root / k, recursive=True)
            if not names:
                raise CmmError(f"Class folder {root / k} holds no images ({_EXTS}).")
            rel += [f"{k}/{n}" for n in names]
            labels += [c] * len(names)
        return subdirs, rel, labels, None
    keys = sorted({c for d in given for c in os.listdir(root / d) if (root / d / c).is_dir() and not c.startswith(".")})
    lab = {k: i for i, k in enumerate(keys)}
    for d in given:
        for k in sorted(os.listdir(root / d)):
            if k not in lab:
                continue
            for n in list_images(root / d / k, recursive=True):
                rel.append(f"{d}/{k}/{n}")
                labels.append(lab[k])
                split_of.append(SPLIT_ALIASES[d.lower()])
    return keys, rel, labels, split_of


def load_folder(root: Path, classnames_file=None, seed: int = SPLIT_SEED) -> Dataset:
    """An image folder: one sub-folder per class, or train/ val/ test/ each holding class folders."""
    root = Path(root).expanduser().resolve()
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classnames_file is None and (root / "classnames.txt").is_file():
        classnames_file = root / "classnames.txt"
    layout = f"{root.name}/\n|-- <class name>/   (images: {_EXTS})\n|-- ...\n"
    layout += "(or train/, val/, test/ each holding class folders)"
    keys, rel, labels, split_of = _folder_rows(root, subdirs)
    if not keys:
        raise CmmError(f"{root} has no class sub-folders.", f"An image-folder dataset looks like:\n{indent(layout)}")
    src = {"type": "image_folder", "dir": str(root)}
    return _assemble(user_data_name(root), keys, rel, labels, split_of, root, classnames_file, layout, src, seed)


def _read_rows(f: Path) -> list[list[str]]:
    """Non-empty rows of a CSV (a TSV: tab-separated), header dropped, 2 or 3 columns each."""
    with open(f, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t" if f.suffix.lower() == ".tsv" else ",")
        rows = [r for r in reader if r and any(x.strip() for x in r)]
    if rows and rows[0][0].strip().lower() in _CSV_HEADERS:
        rows = rows[1:]
    if not rows:
        raise CmmError(f"{f} holds no rows (expected path,label[,split]).")
    bad = [i for i, r in enumerate(rows) if len(r) < 2 or len(r) > 3]
    if bad:
        raise CmmError(f"{f}: row {bad[0] + 1} has {len(rows[bad[0]])} columns; expected path,label[,split].")
    return rows


def _csv_labels(f: Path, raw: list[str], classnames_file) -> tuple[list[str], list[int], list[str] | None]:
    """(class keys, int labels, explicit class names or None) from the label column."""
    if all(re.fullmatch(r"-?\d+", x) for x in raw):
        labels = [int(x) for x in raw]
        if min(labels) < 0:
            raise CmmError(f"{f}: negative label {min(labels)}.")
        C = max(labels) + 1
        return [str(i) for i in range(C)], labels, None if classnames_file else [f"class {i}" for i in range(C)]
    if classnames_file is not None:
        lines = [ln.strip() for ln in Path(classnames_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        firsts = [ln.split(None, 1)[0] for ln in lines]
        keys = firsts if set(raw) <= set(firsts) else lines
        if not set(raw) <= set(keys):
            raise CmmError(f"{f}: labels {sorted(set(raw) - set(keys))[:5]} are not in {classnames_file}.")
    else:
        keys = sorted(set(raw))
    lab = {k: i for i, k in enumerate(keys)}
    return keys, [lab[x] for x in raw], None


def load_csv(f: Path, classnames_file=None, seed: int = SPLIT_SEED) -> Dataset:
    """A CSV (or TSV) of `path,label[,split]` rows; relative paths are resolved against its folder."""
    f = Path(f).expanduser().resolve()
    base = f.parent
    if classnames_file is None and (base / "classnames.txt").is_file():
        classnames_file = base / "classnames.txt"
    rows = _read_rows(f)
    rel = [r[0].strip() for r in rows]
    splits_col = [SPLIT_ALIASES.get(r[2].strip().lower(), r[2].strip().lower()) if len(r) == 3 else "" for r in rows]
    if any(splits_col) and not all(splits_col):
        raise CmmError(f"{f}: some rows give a split and some do not; give it for every row or for none.")
    keys, labels, names = _csv_labels(f, [r[1].strip() for r in rows], classnames_file)
    rel = [p if os.path.isabs(p) else os.path.normpath(p) for p in rel]
    layout = f"{f.name}: rows 'path,label[,split]'; relative paths are resolved against {base}"
    src = {"type": "csv", "file": str(f)}
    split_of = splits_col if all(splits_col) else None
    return _assemble(user_data_name(f), keys, rel, labels, split_of, base, classnames_file, layout, src, seed, names)


def load_custom_manifest(m: dict, opts: LoadOptions) -> Dataset:
    """A user manifest whose split source is an image folder or a CSV, with its own names and templates."""
    src = m["split_source"]
    p = Path(m.get("_base", ".")) / (src.get("dir") or src.get("file"))
    ds = load_folder(p) if src["type"] == "image_folder" else load_csv(p)
    if len(ds.classnames) != len(m["classnames"]):
        raise CmmError(
            f"Manifest '{m['name']}' names {len(m['classnames'])} classes; its data has {len(ds.classnames)}."
        )
    ds.name, ds.classnames = m["name"], list(m["classnames"])
    ds.templates, ds.default_templates = m["templates"], m["default_templates"]
    ds.manifest = _mf.public(m)
    rel = {s: ([os.path.relpath(p, ds.root) for p in sl.paths], sl.labels) for s, sl in ds.splits.items()}
    ds.manifest_sha256 = _mf.manifest_sha256(m, digest(rel))
    return ds
