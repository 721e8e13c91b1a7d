#!/usr/bin/env python3
"""Build `data_manifests/` (the datasets-as-data registry) from the CoOp protocol files.

    python tools/build_manifests.py --protocol DIR [--out data_manifests] [--only NAME,...] [--check]

The protocol folder DIR holds the published files the registry is derived from
(all MIT-licensed; the builder copies their licences into `LICENSES/`):

    coop_splits/split_zhou_<Name>.json    CoOp's split files (Google Drive links in CoOp's DATASETS.md,
                                          https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)
    fewshot_indices/<dataset>/shot_<K>-seed_<S>.json
                                          the published few-shot index files (the `indices/` folder of
                                          https://github.com/linzhiqiu/cross_modal_adaptation)
    templates/cross_modal_adaptation_hand_crafted.py
                                          Tip-Adapter's hand-crafted templates (cross_modal_adaptation,
                                          engine/templates/hand_crafted.py)
    templates/openai_CLIP_data_prompts.md, templates/openai_imagenet_80_templates.txt
                                          CLIP's data/prompts.md and its 80 ImageNet templates
                                          (https://github.com/openai/CLIP)
    classnames/imagenet_classnames_clip.txt, imagenet_wnids.txt, imagenet_{a,r}_wnids.txt,
    imagenet_{a,r}_class_indices.txt      CLIP's ImageNet class names, the WordNet ids in class order, and
                                          the 200 classes of ImageNet-A / -R (WordNet ids, ImageNet indices)
    licenses/                             the licence file of each project above

Reproducible: the same protocol folder gives byte-identical output (gzip with
mtime 0, sorted keys, npz written without timestamps that matter).
`--check` builds into a temporary folder and compares with `--out` instead of
writing (exit status 1 and the differing files when they differ); `--only`
builds (or checks) the named datasets and `LICENSES/` only, so a subset of the
protocol folder suffices.

What it writes, per dataset `<name>`:
- `<name>.json`: the manifest (names, aliases, CoOp layout, class names,
  WordNet ids, both template sets, split source, expected sizes, licence,
  where to get the data, download archives).
- `<name>/split.json.gz`: the CoOp split file in compact form (paths relative to
  the dataset's image folder + int labels; class names live in the manifest),
  for the 7 datasets whose `split_zhou_*.json` is published.
- `<name>/fewshot.npz`: the published few-shot index files as int32 arrays,
  keys `shot_<K>-seed_<S>/train` and `.../val`, positions into the split lists.
- `<name>/pool.json.gz` (Food101, SUN397, FGVCAircraft): for every published
  few-shot position, the relative path it must point at, so the tool can check
  that the user's split file is the one the indices were drawn from.
- `imagenet/pool.npz`: the ImageNet few-shot pool (unique train / val images of
  the published files, as class index + file number), which heads the
  ImageNet train / val split lists.

Every published file is checked while building: K per class in train,
min(K, 4) per class in val, train and val disjoint, data rows agree with the
split lists. A violation stops the build (the data is never "fixed").
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]
from manifest_sources import ATTRIBUTION, DATASETS, IMAGENET, SHIFTS, tiny_manifest  # noqa: E402  (static facts, beside it)
from protocol_files import check_group, load_fewshot_files, prompt_name, read_common, rel_after  # noqa: E402

from cmm_cache.datasets.fewshot import group_name  # noqa: E402  (the one shot_K-seed_S rule)

# In the output folder, never touched (published/: figures with their sources, written by hand).
HAND_WRITTEN = ("__init__.py", "README.md", "published")
COOP_INSTRUCTIONS = "CoOp DATASETS.md: https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
ALL_NAMES = [*DATASETS, "imagenet", *SHIFTS, "tiny"]


def write_gz_json(path: Path, obj) -> None:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(raw)
    path.write_bytes(buf.getvalue())


def write_npz(path: Path, arrays: dict) -> None:
    # np.savez_compressed stamps zip entries with a fixed date, so output is reproducible.
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: arrays[k] for k in sorted(arrays)})


def _source(homepage: str, citation: str) -> dict:
    return {"homepage": homepage, "instructions": COOP_INSTRUCTIONS, "citation": citation}


def _coop_shipped(name, info, protocol, ddir, groups, marker, arrays) -> tuple[list[str], dict]:
    """A published CoOp split file: shipped compact; the indices must point at its rows. -> (raw names, source)."""
    sp = json.loads((protocol / "coop_splits" / f"split_zhou_{info['coop_split']}.json").read_text())
    labs = {}
    for rows in sp.values():
        for _p, lab, c in rows:
            assert labs.setdefault(lab, c) == c
    compact = {
        s: {"paths": [r[0] for r in sp[s]], "labels": [int(r[1]) for r in sp[s]]} for s in ("train", "val", "test")
    }
    for s, n in info["sizes"].items():
        assert len(compact[s]["paths"]) == n, (name, s)
    write_gz_json(ddir / "split.json.gz", compact)
    # Published indices must point at the same path and label in the split list.
    for K, S, d in groups:
        for part in ("train", "val"):
            for r, i in zip(d[part]["data"], d[part]["indices"]):
                if (
                    compact[part]["paths"][i] != rel_after(r["impath"], marker)
                    or compact[part]["labels"][i] != r["label"]
                ):
                    raise SystemExit(f"{name} {group_name(K, S)} {part}: index {i} does not match {r['impath']}")
            arrays[f"{group_name(K, S)}/{part}"] = np.asarray(d[part]["indices"], dtype=np.int32)
    origin = (
        f"CoOp split_zhou_{info['coop_split']}.json (compact: paths relative to "
        f"{info['folder']}/{info['image_dir'] or '.'}, int labels)"
    )
    return [labs[i] for i in range(len(labs))], {"type": "shipped", "file": f"{name}/split.json.gz", "origin": origin}


def _coop_pool(name, info, ddir, groups, marker, arrays) -> tuple[list[str], dict]:
    """Split lists read from the user's dataset folder: ship the indices and the path each must point at."""
    labs = {}
    pool = {"train": {}, "val": {}}
    for K, S, d in groups:
        for part in ("train", "val"):
            for r, i in zip(d[part]["data"], d[part]["indices"]):
                assert labs.setdefault(r["label"], r["classname"]) == r["classname"]
                rel = rel_after(r["impath"], marker)
                assert pool[part].setdefault(i, (rel, r["label"])) == (rel, r["label"]), (name, i)
            arrays[f"{group_name(K, S)}/{part}"] = np.asarray(d[part]["indices"], dtype=np.int32)
    write_gz_json(
        ddir / "pool.json.gz",
        {
            part: {
                "index": sorted(pool[part]),
                "paths": [pool[part][i][0] for i in sorted(pool[part])],
                "labels": [pool[part][i][1] for i in sorted(pool[part])],
            }
            for part in pool
        },
    )
    if info.get("fgvc"):
        src = {
            "type": "fgvc_variant_files",
            "files": {s: f"images_variant_{s}.txt" for s in ("train", "val", "test")},
            "classes_file": "variants.txt",
            "origin": (
                "official FGVC-Aircraft 2013b variant lists (CoOp reads the same files); they come with the archive"
            ),
            "pool": f"{name}/pool.json.gz",
        }
    else:
        fname = f"split_zhou_{info['coop_split_missing']}.json"
        src = {
            "type": "coop_split_file",
            "filename": fname,
            "url": info["split_url"],
            "origin": f"CoOp {fname} (not shipped here: put it in {info['folder']}/)",
            "pool": f"{name}/pool.json.gz",
        }
    return [labs[i] for i in range(len(labs))], src


def build_coop(name: str, protocol: Path, out: Path, common: dict) -> dict:
    """One of the 10 CoOp datasets besides ImageNet: its data folder and its manifest."""
    info = DATASETS[name]
    ddir = out / name
    ddir.mkdir()
    folder, image_dir = info["folder"], info["image_dir"]
    marker = folder + "/" + (image_dir + "/" if image_dir else "")
    groups = load_fewshot_files(protocol / "fewshot_indices" / info["fewshot_dir"])
    for K, S, d in groups:
        check_group(name, K, S, d)
    arrays = {}
    if "coop_split" in info:
        raw_names, split_source = _coop_shipped(name, info, protocol, ddir, groups, marker, arrays)
    else:
        raw_names, split_source = _coop_pool(name, info, ddir, groups, marker, arrays)
    write_npz(ddir / "fewshot.npz", arrays)
    m = {
        "schema": "cmm-manifest/1",
        "name": name,
        "title": info["title"],
        "aliases": info["aliases"],
        "kind": "coop",
        "folder": folder,
        "image_dir": image_dir,
        "layout": info["layout"],
        "split_source": split_source,
        "classnames": [prompt_name(c) for c in raw_names],
        "coop_classnames": raw_names,
        "num_classes": len(raw_names),
        "templates": {"coop": common["tip"][info["tip"]], "clip": common["clipmd"][info["clip_md"]]},
        "default_templates": "coop",
        "split_sizes": info["sizes"],
        "fewshot": {
            "file": f"{name}/fewshot.npz",
            "groups": [group_name(K, S) for K, S, _ in groups],
            "origin": (
                "cross_modal_adaptation few-shot index files (CoOp protocol: K per class from train, min(K, 4) "
                "per class from val)"
            ),
        },
        "source": _source(info["homepage"], info["citation"]),
        "download": {"archives": info["archives"]} if info.get("archives") else None,
    }
    if info.get("download_note"):
        m["download_note"] = info["download_note"]
    m["license"] = info["license"]
    m["attribution"] = [ATTRIBUTION["coop"], ATTRIBUTION["cma"], ATTRIBUTION["clip"]]
    return m


def _imagenet_pool(protocol: Path, common: dict, out: Path) -> tuple[dict, list]:
    """The pool of the published ImageNet few-shot images, re-indexed (written to imagenet/): (sizes, groups)."""
    groups = load_fewshot_files(protocol / "fewshot_indices/imagenet")
    wnid_pos = common["wnid_pos"]
    pool = {"train": {}, "val": {}}
    fname_re = re.compile(r"images/train/(n\d{8})/(n\d{8})_(\d+)\.JPEG$")
    for K, S, d in groups:
        check_group("imagenet", K, S, d)
        for part in ("train", "val"):
            for r in d[part]["data"]:
                mt = fname_re.search(r["impath"])
                assert mt and mt.group(1) == mt.group(2), r["impath"]
                assert wnid_pos[mt.group(1)] == r["label"], r
                pool[part][(r["label"], int(mt.group(3)))] = None
    keys = {part: sorted(pool[part]) for part in pool}  # (class, file number) order
    pos = {part: {k: i for i, k in enumerate(keys[part])} for part in pool}
    assert not set(keys["train"]) & set(keys["val"])
    arrays = {}
    for K, S, d in groups:
        for part in ("train", "val"):
            idx = [pos[part][(r["label"], int(fname_re.search(r["impath"]).group(3)))] for r in d[part]["data"]]
            arrays[f"{group_name(K, S)}/{part}"] = np.asarray(idx, dtype=np.int32)
    (out / "imagenet").mkdir()
    write_npz(out / "imagenet/fewshot.npz", arrays)
    write_npz(
        out / "imagenet/pool.npz",
        {
            f"{part}_{c}": np.asarray([k[j] for k in keys[part]], dtype=np.int32 if j else np.int16)
            for part in ("train", "val")
            for j, c in ((0, "class"), (1, "number"))
        },
    )
    return {"train_pool": len(keys["train"]), "val_pool": len(keys["val"])}, groups


def build_imagenet(protocol: Path, out: Path, common: dict) -> dict:
    sizes, groups = _imagenet_pool(protocol, common, out)
    info = IMAGENET
    return {
        "schema": "cmm-manifest/1",
        "name": "imagenet",
        **{k: info[k] for k in ("title", "aliases")},
        "kind": "coop",
        **{k: info[k] for k in ("folder", "image_dir", "layout")},
        "classnames": common["in_names"],
        "wnids": common["in_wnids"],
        "templates": {"coop": common["tip"]["imagenet"], "clip": common["in80"]},
        "default_templates": "coop",
        "attribution": [ATTRIBUTION["coop"], ATTRIBUTION["cma"], ATTRIBUTION["clip"]],
        "num_classes": 1000,
        "split_source": {
            "type": "imagenet",
            "pool": "imagenet/pool.npz",
            "origin": info["split_origin"],
            "rest_val_fraction": 0.2,
        },
        "split_sizes": {**sizes, "train+val": 1281167, "test": 50000},
        "fewshot": {
            "file": "imagenet/fewshot.npz",
            "groups": [group_name(K, S) for K, S, _ in groups],
            "origin": info["fewshot_origin"],
        },
        "source": _source(info["homepage"], info["citation"]),
        "download": None,
        **{k: info[k] for k in ("download_note", "license")},
    }


def build_shift(name: str, protocol: Path, common: dict) -> dict:
    """An ImageNet shift set (test only): all 1000 classes, or the 200 of ImageNet-A / -R."""
    info = SHIFTS[name]
    if info["subset"]:
        key = info["subset"]
        w = [t for t in (protocol / f"classnames/imagenet_{key}_wnids.txt").read_text().split() if t]
        idx = [int(t) for t in (protocol / f"classnames/imagenet_{key}_class_indices.txt").read_text().split()]
        assert len(w) == 200 and len(set(w)) == 200 and idx == [common["wnid_pos"][x] for x in w], key
    else:
        w, idx = common["in_wnids"], list(range(1000))
    by = "ImageNet class index (folder name)" if info["class_dirs"] == "index" else "WordNet id"
    return {
        "schema": "cmm-manifest/1",
        "name": name,
        "title": info["title"],
        "aliases": info["aliases"],
        "kind": "shift",
        "folder": info["folder"],
        "image_dir": info["test_dir"],
        "layout": info["layout"],
        "classnames": [common["in_names"][i] for i in idx],
        "wnids": w,
        "imagenet_index": idx,
        "num_classes": len(idx),
        "templates": {"coop": common["tip"]["imagenet"], "clip": common["in80"]},
        "default_templates": "coop",
        "split_source": {
            "type": "class_folders",
            "split": "test",
            "class_dirs": info["class_dirs"],
            "origin": "every image under the class folders (sorted), test only; classes matched by " + by,
        },
        "split_sizes": {"test": info["size"]},
        "fewshot": None,
        "source": _source(info["homepage"], info["citation"]),
        "download": {"archives": info["archives"]} if info.get("archives") else None,
        **({"download_note": info["download_note"]} if info.get("download_note") else {}),
        "license": info["license"],
        "attribution": [ATTRIBUTION["coop"], ATTRIBUTION["clip"]],
    }


def write_licenses(protocol: Path, out: Path) -> None:
    lic = out / "LICENSES"
    lic.mkdir()
    for f in sorted((protocol / "licenses").iterdir()):
        shutil.copyfile(f, lic / f.name)
    lines = [
        "# Attribution\n",
        "The data in this folder is derived from these MIT-licensed projects (licences alongside):\n",
    ]
    lines += [f"- {v}" for v in ATTRIBUTION.values()]
    lines += [
        "",
        "The datasets themselves are not redistributed; each manifest names its licence and where to get it.",
        "Rebuild with `python tools/build_manifests.py --protocol <path to protocol/>`.",
        "",
    ]
    (lic / "ATTRIBUTION.md").write_text("\n".join(lines))


def _owned(out: Path, names: list[str]) -> list[Path]:
    """What the builder writes for `names` (plus LICENSES/) in `out`, as found there."""
    found = [out / "LICENSES"] + [p for n in names for p in (out / f"{n}.json", out / n)]
    return [p for p in found if p.exists()]


def build(protocol: Path, out: Path, only: list[str] | None = None) -> None:
    """Write the manifests and data files of `only` (default: every dataset) and LICENSES/ into `out`."""
    names = only or ALL_NAMES
    unknown = sorted(set(names) - set(ALL_NAMES))
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; known: {', '.join(ALL_NAMES)}")
    common = read_common(protocol)
    # Start clean (only what this script writes), keep the hand-written files.
    stale = _owned(out, names) if only else [p for p in out.iterdir() if p.name not in HAND_WRITTEN]
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    manifests = {}
    for name in names:
        if name in DATASETS:
            manifests[name] = build_coop(name, protocol, out, common)
        elif name == "imagenet":
            manifests[name] = build_imagenet(protocol, out, common)
        elif name in SHIFTS:
            manifests[name] = build_shift(name, protocol, common)
        else:
            manifests[name] = tiny_manifest()
    for name, m in manifests.items():
        (out / f"{name}.json").write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")
    write_licenses(protocol, out)


def _files(root: Path, owned: list[Path]) -> set[Path]:
    out = set()
    for p in owned:
        out |= {q.relative_to(root) for q in ([p] if p.is_file() else p.rglob("*")) if q.is_file()}
    return {p for p in out if "__pycache__" not in p.parts}


def check(protocol: Path, out: Path, only: list[str] | None = None) -> list[str]:
    """Build into a temporary folder and compare with `out`: the differences (empty when identical)."""
    names = only or ALL_NAMES
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        build(protocol, fresh, names)
        built = _files(fresh, _owned(fresh, names))
        have = _files(out, _owned(out, names) if only else [p for p in out.iterdir() if p.name not in HAND_WRITTEN])
        problems = [f"missing in {out}: {p}" for p in sorted(built - have)]
        problems += [f"not built (stale?) in {out}: {p}" for p in sorted(have - built)]
        problems += [
            f"differs: {p}" for p in sorted(built & have) if not filecmp.cmp(fresh / p, out / p, shallow=False)
        ]
    return problems


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="The protocol folder's layout and where each of its files comes from: this script's docstring.",
    )
    ap.add_argument(
        "--protocol",
        required=True,
        type=Path,
        help="Folder of the published protocol files: coop_splits/ (CoOp's split_zhou_*.json), fewshot_indices/ "
        "(cross_modal_adaptation's indices/), templates/ and classnames/ (CLIP, cross_modal_adaptation), licenses/.",
    )
    ap.add_argument("--out", default=REPO / "data_manifests", type=Path, help="Output folder [data_manifests/].")
    ap.add_argument("--only", default=None, help="Comma-separated dataset names: build only these (and LICENSES/).")
    ap.add_argument("--check", action="store_true", help="Compare a fresh build with --out instead of writing.")
    a = ap.parse_args()
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    if not a.protocol.is_dir():
        raise SystemExit(f"protocol folder not found: {a.protocol}")
    if a.check:
        problems = check(a.protocol, a.out, only)
        for p in problems:
            print(p)
        print(f"{a.out}: {'differs from' if problems else 'matches'} a fresh build from {a.protocol}")
        raise SystemExit(1 if problems else 0)
    build(a.protocol, a.out, only)
    total = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"wrote {a.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
