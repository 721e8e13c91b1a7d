"""The `Dataset` every loader returns, and the helpers the loaders share."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.fewshot import draw as _draw
from cmm_cache.datasets.fewshot import group_name
from cmm_cache.errors import CmmError
from cmm_cache.util.paths import is_image_file

_FIRST_MISSING = 5  # missing files named in an error message


@dataclass
class SplitList:
    """One split in the manifest's split-list order: absolute image paths and int64 labels."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    """A dataset ready for extraction. Every member below exists on every dataset (no probing needed).

    - `name`: the short name shown in tables and results (registered name, or your folder / CSV's name).
    - `splits`: split name -> SplitList; "train", "val", "test" for ordinary
      datasets, only "test" for shift sets.
    - `fewshot(shots, seed)` -> (train_rows, val_rows): int64 positions into
      `splits["train"]` / `splits["val"]` (published indices where shipped,
      else a seeded draw of K per class from train and min(K, 4) from val);
      `is_published(shots, seed)` tells which; `fewshot_indices` holds the published ones.
    - `max_shots()`: the largest K a seeded draw supports; `verify(rows_by_split)`: are the image files there.
    - `templates`: template-set name -> list of templates containing "{}"; `default_templates` names one.
    - `wnids`: WordNet ids (ImageNet family, else None); `imagenet_index`: for
      shift sets, each class's index among the 1000 ImageNet classes (else None); `is_shift`.
    - `manifest_sha256`: identifies the resolved manifest and split lists (goes into the cache's provenance).
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

    def verify(self, rows_by_split: dict[str, np.ndarray | None] | None = None) -> None:
        """Raise CmmError naming how many files are missing (first few, expected layout).

        `rows_by_split`: split -> row positions to check (None for a split = all
        its rows; splits not named are not checked); None checks every row of every split.
        """
        missing: list[str] = []
        total = 0
        for split, sl in self.splits.items():
            if rows_by_split is not None and split not in rows_by_split:
                continue
            sel = None if rows_by_split is None else rows_by_split[split]
            idx = range(len(sl.paths)) if sel is None else (int(i) for i in np.asarray(sel).ravel())
            for i in idx:
                total += 1
                if not os.path.isfile(sl.paths[i]):
                    missing.append(sl.paths[i])
        if missing:
            where = f" under {self.root}" if self.root else ""
            hint = "First missing:\n  " + "\n  ".join(missing[:_FIRST_MISSING])
            if len(missing) > _FIRST_MISSING:
                hint += f"\n  ... and {len(missing) - _FIRST_MISSING} more"
            if self.layout:
                hint += f"\nExpected layout{where}:\n{indent(self.layout)}"
            if self.get_hint:
                hint += "\n" + self.get_hint
            raise CmmError(f"{len(missing)} of {total} image files of dataset '{self.name}' are missing{where}.", hint)

    def describe(self) -> dict:
        """What `cmm-cache datasets PATH` shows: classes with their images per split, split sizes, how the
        split was made, the few-shot limits."""
        counts = {s: np.bincount(sl.labels, minlength=self.num_classes).tolist() for s, sl in self.splits.items()}
        return {
            "name": self.name,
            "kind": self.manifest.get("kind"),
            "root": str(self.root) if self.root else None,
            "num_classes": self.num_classes,
            "classes": [
                {"name": c, "images": {s: n[i] for s, n in counts.items()}} for i, c in enumerate(self.classnames)
            ],
            "split_sizes": {s: len(sl) for s, sl in self.splits.items()},
            "split": split_method(self.manifest.get("split_source") or {}),
            "max_shots": self.max_shots(),
            "published_fewshot": [group_name(k, s) for k, s in sorted(self.fewshot_indices)],
            "templates": {k: len(v) for k, v in self.templates.items()},
            "default_templates": self.default_templates,
            "manifest_sha256": self.manifest_sha256,
            "warnings": list(self.warnings),
        }


def split_method(src: dict) -> str:
    """How a dataset's train/val/test split was made, in words."""
    how = src.get("split")
    where = "train/ val/ test/ sub-folders" if src.get("type") == "image_folder" else "split column"
    if how == "seeded":
        fr = src.get("fractions") or {}
        pct = "/".join(f"{round(100 * fr.get(p, 0))}" for p in ("train", "val", "test"))
        return f"seeded per class: {pct} % train/val/test, seed {src.get('seed')}, every class in every split"
    if how == "given":
        return f"given by the {where}"
    if how and how.startswith("given; val"):
        return (
            f"train/test given by the {where}; val = a seeded 20 % of each class's train images, seed {src.get('seed')}"
        )
    return src.get("origin") or src.get("type", "")


# ----------------------------------------------------------------------------- helpers shared by the loaders


def indent(text: str, pad: str = "  ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def get_hint(m: dict) -> str:
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


def list_images(d: Path, recursive: bool = False) -> list[str]:
    """Image file names under d (relative to d, '/'-separated), sorted."""
    if recursive:
        out = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            rel = os.path.relpath(dirpath, d)
            for f in filenames:
                if is_image_file(f):
                    out.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
        return sorted(out)
    with os.scandir(d) as it:
        return sorted(e.name for e in it if is_image_file(e.name) and e.is_file())


def digest(splits: dict[str, tuple[list[str], np.ndarray]]) -> bytes:
    """Bytes identifying the resolved split lists (relative paths + labels) for the manifest hash."""
    h = hashlib.sha256()
    for s in sorted(splits):
        rel, lab = splits[s]
        h.update(s.encode() + b"\0")
        h.update("\n".join(rel).encode())
        h.update(np.asarray(lab, dtype=np.int64).tobytes())
    return h.digest()


def read_json_maybe_gz(path: Path):
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def prompt_name(raw: str) -> str:
    """A folder name / label as CoOp prompts it (underscores become spaces)."""
    return raw.replace("_", " ").strip()


def folder_missing(m: dict, folder: Path) -> CmmError:
    return CmmError(
        f"Dataset folder for '{m['name']}' not found: {folder}",
        f"Expected layout under the data root:\n{indent(m['layout'])}\n{get_hint(m)}",
    )


@dataclass(frozen=True)
class LoadOptions:
    """What a manifest loader may need besides the manifest: where data and caches live, whether to download."""

    data_root: str | os.PathLike | None = None
    download: bool = False
    cache_root: str | os.PathLike | None = None


# split -> (image paths relative to the split's image folder, int64 labels): what a split reader returns
RelLists = dict[str, tuple[list[str], np.ndarray]]


def make_dataset(m, splits, rel_lists, root, layout, get_hint, published=None, warnings=None) -> Dataset:
    """A Dataset from a manifest and its resolved split lists (checked: labels in range, train and val disjoint)."""
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
        manifest_sha256=_mf.manifest_sha256(m, digest(rel_lists)),
        wnids=list(m["wnids"]) if m.get("wnids") else None,
        imagenet_index=list(m["imagenet_index"]) if m.get("imagenet_index") is not None else None,
        root=Path(root) if root else None,
        fewshot_indices=published or {},
        manifest=_mf.public(m),
        layout=layout,
        get_hint=get_hint,
        warnings=warnings or [],
    )
