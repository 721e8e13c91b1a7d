"""Datasets as data: the manifest registry (in the style of open_clip's model configs).

Every `*.json` file in the `cmm_cache.data_manifests` package folder is one
dataset manifest (schema ``cmm-manifest/1``, see `data_manifests/README` in the
docstring of :func:`validate_manifest`). The registry scans that folder once,
indexes names and aliases, and validates on load. A user-written manifest
(any path ending in ``.json``) is accepted too; its data files are resolved
relative to the manifest's own folder.

Public API:

- :func:`list_datasets` -> sorted canonical names
- :func:`resolve_name` (name or alias, case- and `-`/`_`-insensitive) -> canonical name or None
- :func:`get_manifest` (name or alias) -> validated manifest dict (a copy)
- :func:`load_manifest_file` (path) -> validated manifest dict
- :func:`validate_manifest` (dict) -> list of problems (empty when valid)
- :func:`data_file` (manifest, relative path) -> absolute Path of a shipped data file
- :func:`manifest_sha256` (manifest) -> hex digest of the canonical manifest content
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from cmm_cache.errors import CmmError

SCHEMA = "cmm-manifest/1"
KINDS = ("coop", "shift", "synthetic", "custom")


@dataclass(frozen=True)
class SplitSource:
    """One kind of `split_source.type`: where a dataset's split lists come from (the one list of kinds;
    `cmm_cache.datasets.registry.SPLIT_READERS` holds a reader for each)."""

    doc: str
    listing: str  # how `cmm-cache datasets` says where the split lists come from
    split_shipped: bool  # the split lists (or what builds them) ship with cmm-cache; else a file the user fetches
    needs_data_root: bool = True


SPLIT_SOURCES: dict[str, SplitSource] = {
    "shipped": SplitSource(
        "compact split file shipped beside the manifest: {split: {paths, labels}} (json or json.gz)", "shipped", True
    ),
    "coop_split_file": SplitSource(
        "CoOp split_zhou_*.json read from the dataset folder (not shipped)", "needs the split file", False
    ),
    "fgvc_variant_files": SplitSource(
        "FGVC-Aircraft's official images_variant_*.txt + variants.txt", "official lists (archive)", True
    ),
    "imagenet": SplitSource("few-shot pool + rest of images/train; test = images/val", "pool shipped + disk", True),
    "class_folders": SplitSource("shift sets: <image_dir>/<wnid or index>/* -> test", "listed from disk", True),
    "synthetic": SplitSource("tiny: generated under the cache dir", "generated", True, needs_data_root=False),
    "image_folder": SplitSource(
        "your own data: one sub-folder per class (optionally train/val/test/)",
        "your folder",
        False,
        needs_data_root=False,
    ),
    "csv": SplitSource("your own data: rows path,label[,split]", "your CSV", False, needs_data_root=False),
}
REQUIRED = ("schema", "name", "kind", "classnames", "templates", "default_templates", "split_source")

# Private keys the loader adds; never part of the content hash.
_PRIVATE = ("_base", "_path")


def manifests_dir() -> Path:
    """The folder the registry scans (the `cmm_cache.data_manifests` package)."""
    return Path(str(resources.files("cmm_cache.data_manifests")))


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def _class_problems(m: dict) -> list[str]:
    p = []
    names = m["classnames"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) and c.strip() for c in names):
        p.append("classnames must be a non-empty list of non-empty strings")
        names = []
    # Not required unique: CLIP's published ImageNet names repeat "missile" and
    # "sunglasses" (two WordNet ids each), and the protocol uses them as published.
    if "num_classes" in m and m["num_classes"] != len(names):
        p.append(f"num_classes is {m['num_classes']} but there are {len(names)} classnames")
    for key in ("wnids", "imagenet_index"):
        if m.get(key) is not None and len(m[key]) != len(names):
            p.append(f"{key} has {len(m[key])} entries for {len(names)} classes")
    if m.get("imagenet_index") is not None and not all(
        isinstance(i, int) and 0 <= i < 1000 for i in m["imagenet_index"]
    ):
        p.append("imagenet_index must hold ints in 0..999")
    if m["kind"] == "shift" and m.get("imagenet_index") is None:
        p.append("a shift set needs imagenet_index")
    return p


def _template_problems(t, default) -> list[str]:
    p = []
    if not isinstance(t, dict) or not t:
        p.append("templates must be a non-empty {set name: [templates]} object")
    else:
        for k, v in t.items():
            if not isinstance(v, list) or not v:
                p.append(f"template set {k!r} is empty")
            elif not all(isinstance(s, str) and s.count("{}") == 1 for s in v):
                p.append(f"template set {k!r}: every template needs exactly one '{{}}'")
        if default not in t:
            p.append(f"default_templates {default!r} is not one of {', '.join(t)}")
    return p


def _missing_files(m: dict, src: dict, fs) -> list[str]:
    """Data files the manifest names that are not beside it."""
    files = []
    if src.get("type") == "shipped":
        files.append(src.get("file"))
    if src.get("pool"):
        files.append(src["pool"])
    if isinstance(fs, dict) and fs.get("file"):
        files.append(fs["file"])
    return [
        f"data file {f!r} not found next to the manifest"
        for f in files
        if not f or not (Path(m["_base"]) / f).is_file()
    ]


def validate_manifest(m: dict, *, check_files: bool = True) -> list[str]:
    """Problems with a manifest (an empty list means valid).

    Fields: ``schema`` ("cmm-manifest/1"), ``name``, ``aliases`` [str],
    ``title``, ``kind`` (coop | shift | synthetic | custom), ``folder``
    (under the data root), ``image_dir`` (inside the folder; split paths are
    relative to it), ``layout`` (text shown when files are missing),
    ``classnames`` [C] (as prompted), ``num_classes``, ``wnids`` [C] and
    ``imagenet_index`` [C] (ImageNet family / shift sets), ``templates``
    {set: [str with one "{}"]}, ``default_templates``, ``split_source``
    {type, ...}, ``split_sizes`` {split: n}, ``fewshot`` {file, groups} or
    null, ``source`` {homepage, instructions, citation}, ``download``
    {archives: [{url, strip?, nested?}]} or null, ``download_note``,
    ``license``, ``attribution`` [str].
    """
    p: list[str] = []
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        return [f"missing field(s): {', '.join(missing)}"]
    if m["schema"] != SCHEMA:
        p.append(f"schema is {m['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(m["name"], str) or not m["name"].strip():
        p.append("name must be a non-empty string")
    if not isinstance(m.get("aliases", []), list) or not all(isinstance(a, str) and a for a in m.get("aliases", [])):
        p.append("aliases must be a list of strings")
    if m["kind"] not in KINDS:
        p.append(f"kind {m['kind']!r} is not one of {', '.join(KINDS)}")
    p += _class_problems(m)
    p += _template_problems(m["templates"], m["default_templates"])
    src = m["split_source"]
    if not isinstance(src, dict) or src.get("type") not in SPLIT_SOURCES:
        p.append(f"split_source.type must be one of {', '.join(SPLIT_SOURCES)}")
        src = {}
    if (
        m["kind"] not in ("synthetic", "custom")
        and src.get("type") in SPLIT_SOURCES
        and SPLIT_SOURCES[src["type"]].needs_data_root
    ):
        for k in ("folder", "layout"):
            if not isinstance(m.get(k), str) or not m.get(k):
                p.append(f"{k} is required for a dataset read from the data root")
    fs = m.get("fewshot")
    if fs is not None:
        if not isinstance(fs, dict) or "file" not in fs or not isinstance(fs.get("groups"), list):
            p.append("fewshot must be null or {file, groups}")
    if check_files and "_base" in m:
        p += _missing_files(m, src, fs)
    dl = m.get("download")
    if dl is not None and (
        not isinstance(dl, dict) or not all(isinstance(a, dict) and a.get("url") for a in dl.get("archives", []))
    ):
        p.append("download must be null or {archives: [{url, ...}]}")
    return p


def _check(m: dict, where: str) -> dict:
    problems = validate_manifest(m)
    if problems:
        raise CmmError(
            f"Invalid dataset manifest {where}: " + "; ".join(problems[:5]),
            "Fix the manifest (see cmm_cache/manifests.py, validate_manifest, for the fields).",
        )
    return m


MANIFEST_PATH_ENV = "CMM_DATASET_MANIFESTS"
_extra_dirs: list[Path] = []


def add_manifest_dir(path) -> None:
    """Register every `*.json` manifest in `path` too (like open_clip's `add_model_config`).

    Folders listed in `$CMM_DATASET_MANIFESTS` (os.pathsep-separated) are scanned as well.
    A user manifest may not reuse a shipped name or alias.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise CmmError(f"Manifest folder not found: {p}")
    if p not in _extra_dirs:
        _extra_dirs.append(p)
    _registry_for.cache_clear()
    _load_file_cached.cache_clear()


def _scan_dirs() -> list[Path]:
    env = [Path(x).expanduser() for x in os.environ.get(MANIFEST_PATH_ENV, "").split(os.pathsep) if x]
    return [manifests_dir(), *[d for d in env if d.is_dir()], *_extra_dirs]


def _registry() -> tuple[dict, dict]:
    # Keyed by each folder's mtime too, so a manifest added to a folder is seen.
    return _registry_for(tuple((str(d), d.stat().st_mtime_ns) for d in _scan_dirs()))


@cache
def _registry_for(dirs: tuple[tuple[str, int], ...]) -> tuple[dict, dict]:
    """(name -> manifest path, normalized name or alias -> name), from the scanned folders."""
    files, index = {}, {}
    for f in [f for d, _ in dirs for f in sorted(Path(d).glob("*.json"))]:
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:  # a broken shipped file is a bug; say which
            raise CmmError(f"Dataset manifest {f} is not valid JSON: {e}") from e
        if not isinstance(m, dict):
            raise CmmError(f"Dataset manifest {f} must hold one JSON object.")
        name = m.get("name") or f.stem
        if name in files:
            raise CmmError(f"Dataset name {name!r} is defined twice: {files[name]} and {f}.")
        files[name] = f
        for key in [name, *m.get("aliases", [])]:
            k = _norm(key)
            if k in index and index[k] != name:
                raise CmmError(f"Dataset name/alias {key!r} is used by both {index[k]!r} and {name!r}.")
            index[k] = name
    return files, index


def list_datasets() -> list[str]:
    """Canonical names of the registered datasets, sorted."""
    return sorted(_registry()[0])


def resolve_name(name: str) -> str | None:
    """A registered canonical name for `name` (a name or an alias), or None."""
    return _registry()[1].get(_norm(name))


def _load_registered(name: str) -> dict:
    return _load_file_cached(str(_registry()[0][name]), name)


@cache
def _load_file_cached(path: str, name: str) -> dict:
    f = Path(path)
    m = json.loads(f.read_text(encoding="utf-8"))
    m["_base"] = str(f.parent)
    m["_path"] = str(f)
    return _check(m, f"'{name}' ({f})")


def get_manifest(name: str) -> dict:
    """The validated manifest of a registered dataset (by name or alias); a deep copy."""
    canon = resolve_name(name)
    if canon is None:
        raise CmmError(
            f"Unknown dataset '{name}'. Registered: {', '.join(list_datasets())}.",
            "Or pass an image folder (one sub-folder per class), a CSV (path,label[,split]) or a manifest .json path. "
            "`cmm-cache datasets` lists them with their aliases.",
        )
    return copy.deepcopy(_load_registered(canon))


def load_manifest_file(path) -> dict:
    """A user-written manifest; its data files are relative to its own folder."""
    f = Path(path).expanduser()
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CmmError(f"Manifest file not found: {f}") from None
    except json.JSONDecodeError as e:
        raise CmmError(f"Manifest {f} is not valid JSON: {e}") from e
    if not isinstance(m, dict):
        raise CmmError(f"Manifest {f} must hold one JSON object.")
    m["_base"] = str(f.resolve().parent)
    m["_path"] = str(f.resolve())
    return _check(m, str(f))


def all_manifests() -> dict[str, dict]:
    """name -> validated manifest, for every registered dataset."""
    return {n: get_manifest(n) for n in list_datasets()}


def data_file(m: dict, rel: str) -> Path:
    """Absolute path of a data file a manifest refers to (relative to the manifest's folder)."""
    return Path(m.get("_base") or manifests_dir()) / rel


def public(m: dict) -> dict:
    """The manifest without the loader's private keys."""
    return {k: v for k, v in m.items() if k not in _PRIVATE}


def manifest_sha256(m: dict, extra: bytes = b"") -> str:
    """sha256 of the canonical manifest JSON (+ `extra`, e.g. the resolved split lists)."""
    h = hashlib.sha256(json.dumps(public(m), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    h.update(extra)
    return h.hexdigest()
