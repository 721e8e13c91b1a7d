#!/usr/bin/env python3
"""Build `data_manifests/` (the datasets-as-data registry) from the CoOp protocol files.

    python tools/build_manifests.py [--protocol /work/shared/protocol] [--out data_manifests]

Reproducible: the same protocol folder gives byte-identical output (gzip with
mtime 0, sorted keys, npz written without timestamps that matter).

What it writes, per dataset `<name>`:
- `<name>.json`: the manifest (names, aliases, CoOp layout, class names,
  WordNet ids, both template sets, split source, expected sizes, licence,
  where to get the data, download archives).
- `<name>/split.json.gz`: the CoOp split file in compact form (paths relative to
  the dataset's image folder + int labels; class names live in the manifest),
  for the 7 datasets whose `split_zhou_*.json` is in the protocol folder.
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
import ast
import collections
import gzip
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SHOTS_RE = re.compile(r"shot_(\d+)-seed_(\d+)\.json$")

# name -> static facts. `coop_split`: CoOp split file name (Name in split_zhou_<Name>.json).
DATASETS = {
    "caltech101": dict(
        title="Caltech101",
        aliases=["caltech-101", "caltech"],
        folder="caltech-101",
        image_dir="101_ObjectCategories",
        coop_split="Caltech101",
        fewshot_dir="caltech101",
        tip="caltech101",
        clip_md="Caltech101",
        sizes={"train": 4128, "val": 1649, "test": 2465},
        layout="caltech-101/\n|-- 101_ObjectCategories/   (one folder per class)",
        homepage="https://data.caltech.edu/records/mzrjq-6wc02",
        license="Caltech101: no explicit licence; research use (see homepage). Split: CoOp (MIT).",
        archives=[
            {
                "url": "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                "note": "zip holding 101_ObjectCategories.tar.gz",
                "nested": "caltech-101/101_ObjectCategories.tar.gz",
            }
        ],
        citation="Fei-Fei, Fergus, Perona. Learning generative visual models from few training examples. CVPR-W 2004.",
    ),
    "oxford_pets": dict(
        title="Oxford-IIIT Pets",
        aliases=["oxfordpets", "pets", "oxford-pets", "oxford_iiit_pets"],
        folder="oxford_pets",
        image_dir="images",
        coop_split="OxfordPets",
        fewshot_dir="oxford_pets",
        tip="oxford_pets",
        clip_md="OxfordPets",
        sizes={"train": 2944, "val": 736, "test": 3669},
        layout="oxford_pets/\n|-- images/\n|-- annotations/   (optional)",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        license="Oxford-IIIT Pets: CC BY-SA 4.0. Split: CoOp (MIT).",
        archives=[{"url": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"}],
        citation="Parkhi, Vedaldi, Zisserman, Jawahar. Cats and Dogs. CVPR 2012.",
    ),
    "stanford_cars": dict(
        title="Stanford Cars",
        aliases=["stanfordcars", "cars", "stanford-cars"],
        folder="stanford_cars",
        image_dir="",
        coop_split="StanfordCars",
        fewshot_dir="stanford_cars",
        tip="stanford_cars",
        clip_md="StanfordCars",
        sizes={"train": 6509, "val": 1635, "test": 8041},
        layout="stanford_cars/\n|-- cars_train/\n|-- cars_test/",
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        license="Stanford Cars: research use only (see homepage; the original host is offline). Split: CoOp (MIT).",
        archives=None,
        download_note=(
            "The original Stanford host no longer serves the archives; get cars_train/ and cars_test/ from a "
            "mirror you trust (e.g. the Kaggle copy) and place them as shown."
        ),
        citation=(
            "Krause, Stark, Deng, Fei-Fei. 3D Object Representations for Fine-Grained Categorization. ICCV-W 2013."
        ),
    ),
    "oxford_flowers": dict(
        title="Oxford Flowers102",
        aliases=["flowers102", "flowers", "oxfordflowers", "oxford-flowers", "flowers-102"],
        folder="oxford_flowers",
        image_dir="jpg",
        coop_split="OxfordFlowers",
        fewshot_dir="oxford_flowers",
        tip="oxford_flowers",
        clip_md="Flowers102",
        sizes={"train": 4093, "val": 1633, "test": 2463},
        layout="oxford_flowers/\n|-- jpg/   (image_00001.jpg ...)",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        license="Oxford Flowers102: research use (see homepage). Split and cat_to_name: CoOp (MIT).",
        archives=[{"url": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"}],
        citation="Nilsback, Zisserman. Automated Flower Classification over a Large Number of Classes. ICVGIP 2008.",
    ),
    "food101": dict(
        title="Food-101",
        aliases=["food-101", "food"],
        folder="food-101",
        image_dir="images",
        coop_split_missing="Food101",
        fewshot_dir="food101",
        tip="food101",
        clip_md="Food101",
        sizes={"train": 50500, "val": 20200, "test": 30300},
        layout="food-101/\n|-- images/   (one folder per class)\n|-- split_zhou_Food101.json",
        split_url="https://drive.google.com/file/d/1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl/view?usp=sharing",
        homepage="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        license=(
            "Food-101: research use; images from foodspotting.com (see license_agreement.txt in the archive). "
            "Split: CoOp (MIT)."
        ),
        archives=[{"url": "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "strip": "food-101"}],
        citation=(
            "Bossard, Guillaumin, Van Gool. Food-101 - Mining Discriminative Components with Random Forests. ECCV 2014."
        ),
    ),
    "fgvc_aircraft": dict(
        title="FGVC-Aircraft (variants)",
        aliases=["fgvcaircraft", "aircraft", "fgvc-aircraft", "fgvc"],
        folder="fgvc_aircraft",
        image_dir="images",
        fgvc=True,
        fewshot_dir="fgvc_aircraft",
        tip="fgvc_aircraft",
        clip_md="FGVCAircraft",
        sizes={"train": 3334, "val": 3333, "test": 3333},
        layout=(
            "fgvc_aircraft/   (the data/ folder of fgvc-aircraft-2013b)\n|-- images/\n|-- variants.txt\n|-- "
            "images_variant_train.txt\n|-- images_variant_val.txt\n|-- images_variant_test.txt"
        ),
        homepage="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        license=(
            "FGVC-Aircraft: research use only (images by airliners.net photographers). Split: the official "
            "variant lists."
        ),
        archives=[
            {
                "url": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                "strip": "fgvc-aircraft-2013b/data",
            }
        ],
        citation="Maji, Rahtu, Kannala, Blaschko, Vedaldi. Fine-Grained Visual Classification of Aircraft. arXiv 2013.",
    ),
    "sun397": dict(
        title="SUN397",
        aliases=["sun-397", "sun"],
        folder="sun397",
        image_dir="SUN397",
        coop_split_missing="SUN397",
        fewshot_dir="sun397",
        tip="sun397",
        clip_md="SUN397",
        sizes={"train": 15880, "val": 3970, "test": 19850},
        layout="sun397/\n|-- SUN397/   (a/abbey/*.jpg ...)\n|-- split_zhou_SUN397.json",
        split_url="https://drive.google.com/file/d/1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq/view?usp=sharing",
        homepage="https://vision.princeton.edu/projects/2010/SUN/",
        license="SUN397: research use (see homepage). Split: CoOp (MIT).",
        archives=[{"url": "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz"}],
        citation="Xiao, Hays, Ehinger, Oliva, Torralba. SUN Database. CVPR 2010.",
    ),
    "dtd": dict(
        title="Describable Textures (DTD)",
        aliases=["describabletextures", "describable-textures", "textures"],
        folder="dtd",
        image_dir="images",
        coop_split="DescribableTextures",
        fewshot_dir="dtd",
        tip="dtd",
        clip_md="DescribableTextures",
        sizes={"train": 2820, "val": 1128, "test": 1692},
        layout="dtd/\n|-- images/   (banded/banded_0001.jpg ...)",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        license="DTD: research use (see homepage). Split: CoOp (MIT).",
        archives=[{"url": "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", "strip": "dtd"}],
        citation="Cimpoi, Maji, Kokkinos, Mohamed, Vedaldi. Describing Textures in the Wild. CVPR 2014.",
    ),
    "eurosat": dict(
        title="EuroSAT (RGB)",
        aliases=["euro-sat"],
        folder="eurosat",
        image_dir="2750",
        coop_split="EuroSAT",
        fewshot_dir="eurosat",
        tip="eurosat",
        clip_md="EuroSAT",
        sizes={"train": 13500, "val": 5400, "test": 8100},
        layout="eurosat/\n|-- 2750/   (AnnualCrop/AnnualCrop_1.jpg ...)",
        homepage="https://github.com/phelber/EuroSAT",
        license="EuroSAT: MIT. Split: CoOp (MIT).",
        archives=[{"url": "https://madm.dfki.de/files/sentinel/EuroSAT.zip"}],
        citation="Helber, Bischke, Dengel, Borth. EuroSAT. IEEE JSTARS 2019.",
    ),
    "ucf101": dict(
        title="UCF101 (middle frames)",
        aliases=["ucf-101", "ucf"],
        folder="ucf101",
        image_dir="UCF-101-midframes",
        coop_split="UCF101",
        fewshot_dir="ucf101",
        tip="ucf101",
        clip_md="UCF101",
        sizes={"train": 7639, "val": 1898, "test": 3783},
        layout="ucf101/\n|-- UCF-101-midframes/   (Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg ...)",
        homepage="https://www.crcv.ucf.edu/data/UCF101.php",
        license="UCF101: research use (see homepage). Mid-frames and split: CoOp (MIT).",
        archives=None,
        download_note=(
            "CoOp's UCF-101-midframes.zip (the extracted middle frames) is on Google Drive: "
            "https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view?usp=sharing"
        ),
        citation="Soomro, Zamir, Shah. UCF101. arXiv 2012.",
    ),
}

SHIFTS = {
    "imagenetv2": dict(
        title="ImageNet-V2 (matched frequency)",
        aliases=["imagenet-v2", "imagenet_v2", "inv2"],
        folder="imagenetv2",
        test_dir="imagenetv2-matched-frequency-format-val",
        class_dirs="index",
        subset=None,
        size=10000,
        layout=(
            "imagenetv2/\n|-- imagenetv2-matched-frequency-format-val/   (folders 0 ... 999, the ImageNet class index)"
        ),
        homepage="https://github.com/modestyachts/ImageNetV2",
        license="ImageNet-V2: MIT (code); images under the ImageNet terms of access.",
        archives=[
            {
                "url": "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"
            }
        ],
        citation="Recht, Roelofs, Schmidt, Shankar. Do ImageNet Classifiers Generalize to ImageNet? ICML 2019.",
    ),
    "imagenet_sketch": dict(
        title="ImageNet-Sketch",
        aliases=["imagenet-sketch", "imagenetsketch", "sketch"],
        folder="imagenet-sketch",
        test_dir="images",
        class_dirs="wnid",
        subset=None,
        size=50889,
        layout="imagenet-sketch/\n|-- images/   (1000 folders n01440764 ...)",
        homepage="https://github.com/HaohanWang/ImageNet-Sketch",
        license="ImageNet-Sketch: MIT (see homepage); images collected from Google Images.",
        archives=None,
        download_note=(
            "Get ImageNet-Sketch.zip from the link on https://github.com/HaohanWang/ImageNet-Sketch (Google "
            "Drive or Kaggle) and extract its sketch/ folder as imagenet-sketch/images/."
        ),
        citation=(
            "Wang, Ge, Lipton, Xing. Learning Robust Global Representations by Penalizing Local Predictive "
            "Power. NeurIPS 2019."
        ),
    ),
    "imagenet_a": dict(
        title="ImageNet-A",
        aliases=["imagenet-a", "imageneta", "imagenet-adversarial"],
        folder="imagenet-adversarial",
        test_dir="imagenet-a",
        class_dirs="wnid",
        subset="a",
        size=7500,
        layout="imagenet-adversarial/\n|-- imagenet-a/   (200 folders n01498041 ...)",
        homepage="https://github.com/hendrycks/natural-adv-examples",
        license="ImageNet-A: MIT (see homepage).",
        archives=[{"url": "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar"}],
        citation="Hendrycks, Zhao, Basart, Steinhardt, Song. Natural Adversarial Examples. CVPR 2021.",
    ),
    "imagenet_r": dict(
        title="ImageNet-R",
        aliases=["imagenet-r", "imagenetr", "imagenet-rendition"],
        folder="imagenet-rendition",
        test_dir="imagenet-r",
        class_dirs="wnid",
        subset="r",
        size=30000,
        layout="imagenet-rendition/\n|-- imagenet-r/   (200 folders n01443537 ...)",
        homepage="https://github.com/hendrycks/imagenet-r",
        license="ImageNet-R: MIT (see homepage).",
        archives=[{"url": "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"}],
        citation="Hendrycks et al. The Many Faces of Robustness. ICCV 2021.",
    ),
}

ATTRIBUTION = {
    "coop": (
        "CoOp (Zhou et al., 2022), https://github.com/KaiyangZhou/CoOp, MIT: split_zhou_*.json, cleaned class "
        "names, dataset layout, few-shot protocol."
    ),
    "cma": (
        "Cross-Modal Adaptation (Lin et al., 2023), https://github.com/linzhiqiu/cross_modal_adaptation, MIT: "
        "published few-shot index files, Tip-Adapter hand-crafted templates."
    ),
    "clip": (
        "OpenAI CLIP, https://github.com/openai/CLIP, MIT: ImageNet class names, prompt ensembles "
        "(data/prompts.md, ImageNet 80 templates)."
    ),
    "open_clip": "open_clip, https://github.com/mlfoundations/open_clip, MIT: configs-as-data registry design.",
    "clip_benchmark": (
        "CLIP_benchmark, https://github.com/LAION-AI/CLIP_benchmark, MIT: template/class-name cross-check."
    ),
}


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


def clip_md_templates(md: str) -> dict[str, list[str]]:
    """`## Name` sections of CLIP's data/prompts.md -> its `templates = [...]` list."""
    out = {}
    for sec in re.split(r"^## ", md, flags=re.M)[1:]:
        name = sec.split("\n", 1)[0].strip()
        m = re.search(r"^templates = (\[.*?^\])", sec, flags=re.M | re.S)
        if m:
            out[name] = list(ast.literal_eval(m.group(1)))
    return out


def tip_templates(py: str) -> dict[str, list[str]]:
    """The Tip-Adapter hand-crafted sets (evaluated as literal data, not executed)."""
    tree = ast.parse(py)
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            lists[node.targets[0].id] = ast.literal_eval(node.value)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "TIP_ADAPTER_TEMPLATES":
            return {ast.literal_eval(k): lists[v.id] for k, v in zip(node.value.keys, node.value.values)}
    raise SystemExit("TIP_ADAPTER_TEMPLATES not found")


def prompt_name(raw: str) -> str:
    """CoOp prompts with `classname.replace("_", " ")`."""
    return raw.replace("_", " ")


def load_fewshot_files(folder: Path):
    """[(K, S, data)] sorted by K, S."""
    out = []
    for f in folder.glob("shot_*-seed_*.json"):
        m = SHOTS_RE.search(f.name)
        out.append((int(m.group(1)), int(m.group(2)), json.loads(f.read_text())))
    return sorted(out, key=lambda t: (t[0], t[1]))


def check_group(name, K, S, d):
    """The protocol: K per class in train, min(K, 4) per class in val, disjoint."""
    for part, exp in (("train", K), ("val", min(K, 4))):
        c = collections.Counter(r["label"] for r in d[part]["data"])
        bad = {lab: n for lab, n in c.items() if n != exp}
        if bad:
            raise SystemExit(
                f"{name} shot_{K}-seed_{S} {part}: {len(bad)} classes do not have {exp} images: {list(bad.items())[:5]}"
            )
        if len(d[part]["indices"]) != len(d[part]["data"]) or len(set(d[part]["indices"])) != len(d[part]["indices"]):
            raise SystemExit(f"{name} shot_{K}-seed_{S} {part}: indices not unique / not aligned")
    tp = {r["impath"] for r in d["train"]["data"]}
    vp = {r["impath"] for r in d["val"]["data"]}
    if tp & vp:
        raise SystemExit(f"{name} shot_{K}-seed_{S}: {len(tp & vp)} images in both train and val")


def rel_after(impath: str, marker: str) -> str:
    """'./data/dtd/images/banded/x.jpg' with marker 'dtd/images/' -> 'banded/x.jpg'."""
    i = impath.find(marker)
    if i < 0:
        raise SystemExit(f"{impath!r} does not contain {marker!r}")
    return impath[i + len(marker) :]


def build(protocol: Path, out: Path) -> None:
    tip = tip_templates((protocol / "templates/cross_modal_adaptation_hand_crafted.py").read_text())
    clipmd = clip_md_templates((protocol / "templates/openai_CLIP_data_prompts.md").read_text())
    in80 = [t for t in (protocol / "templates/openai_imagenet_80_templates.txt").read_text().splitlines() if t.strip()]
    in_names = [t for t in (protocol / "classnames/imagenet_classnames_clip.txt").read_text().splitlines() if t.strip()]
    in_wnids = [t for t in (protocol / "classnames/imagenet_wnids.txt").read_text().splitlines() if t.strip()]
    assert len(in_names) == 1000 and len(in_wnids) == 1000 and len(set(in_wnids)) == 1000
    assert len(in80) == 80

    # Start clean (only what this script writes), keep the package marker.
    for p in out.iterdir():
        if p.name in ("__init__.py", "README.md"):  # hand-written
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    manifests = {}
    for name, info in DATASETS.items():
        ddir = out / name
        ddir.mkdir()
        folder, image_dir = info["folder"], info["image_dir"]
        marker = folder + "/" + (image_dir + "/" if image_dir else "")
        groups = load_fewshot_files(protocol / "fewshot_indices" / info["fewshot_dir"])
        for K, S, d in groups:
            check_group(name, K, S, d)
        m = {
            "schema": "cmm-manifest/1",
            "name": name,
            "title": info["title"],
            "aliases": info["aliases"],
            "kind": "coop",
            "folder": folder,
            "image_dir": image_dir,
            "layout": info["layout"],
        }
        arrays = {}
        if "coop_split" in info:
            sp = json.loads((protocol / "coop_splits" / f"split_zhou_{info['coop_split']}.json").read_text())
            labs = {}
            for rows in sp.values():
                for _p, lab, c in rows:
                    assert labs.setdefault(lab, c) == c
            raw_names = [labs[i] for i in range(len(labs))]
            compact = {
                s: {"paths": [r[0] for r in sp[s]], "labels": [int(r[1]) for r in sp[s]]}
                for s in ("train", "val", "test")
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
                            raise SystemExit(f"{name} shot_{K}-seed_{S} {part}: index {i} does not match {r['impath']}")
                    arrays[f"shot_{K}-seed_{S}/{part}"] = np.asarray(d[part]["indices"], dtype=np.int32)
            m["split_source"] = {
                "type": "shipped",
                "file": f"{name}/split.json.gz",
                "origin": (
                    f"CoOp split_zhou_{info['coop_split']}.json (compact: paths relative to "
                    f"{folder}/{image_dir or '.'}, int labels)"
                ),
            }
        else:
            # Split file (or official lists) read from the dataset folder; ship the
            # published indices plus the path each must point at.
            labs = {}
            pool = {"train": {}, "val": {}}
            for K, S, d in groups:
                for part in ("train", "val"):
                    for r, i in zip(d[part]["data"], d[part]["indices"]):
                        assert labs.setdefault(r["label"], r["classname"]) == r["classname"]
                        rel = rel_after(r["impath"], marker)
                        assert pool[part].setdefault(i, (rel, r["label"])) == (rel, r["label"]), (name, i)
                    arrays[f"shot_{K}-seed_{S}/{part}"] = np.asarray(d[part]["indices"], dtype=np.int32)
            raw_names = [labs[i] for i in range(len(labs))]
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
                m["split_source"] = {
                    "type": "fgvc_variant_files",
                    "files": {
                        "train": "images_variant_train.txt",
                        "val": "images_variant_val.txt",
                        "test": "images_variant_test.txt",
                    },
                    "classes_file": "variants.txt",
                    "origin": (
                        "official FGVC-Aircraft 2013b variant lists (CoOp reads the same files); they come "
                        "with the archive"
                    ),
                    "pool": f"{name}/pool.json.gz",
                }
            else:
                m["split_source"] = {
                    "type": "coop_split_file",
                    "filename": f"split_zhou_{info['coop_split_missing']}.json",
                    "url": info["split_url"],
                    "origin": (
                        f"CoOp split_zhou_{info['coop_split_missing']}.json (not shipped here: put it in {folder}/)"
                    ),
                    "pool": f"{name}/pool.json.gz",
                }
        write_npz(ddir / "fewshot.npz", arrays)
        m["classnames"] = [prompt_name(c) for c in raw_names]
        m["coop_classnames"] = raw_names
        m["num_classes"] = len(raw_names)
        m["templates"] = {"coop": tip[info["tip"]], "clip": clipmd[info["clip_md"]]}
        m["default_templates"] = "coop"
        m["split_sizes"] = info["sizes"]
        m["fewshot"] = {
            "file": f"{name}/fewshot.npz",
            "groups": [f"shot_{K}-seed_{S}" for K, S, _ in groups],
            "origin": (
                "cross_modal_adaptation few-shot index files (CoOp protocol: K per class from train, min(K, 4) "
                "per class from val)"
            ),
        }
        m["source"] = {
            "homepage": info["homepage"],
            "instructions": "CoOp DATASETS.md: https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md",
            "citation": info["citation"],
        }
        m["download"] = {"archives": info["archives"]} if info.get("archives") else None
        if info.get("download_note"):
            m["download_note"] = info["download_note"]
        m["license"] = info["license"]
        m["attribution"] = [ATTRIBUTION["coop"], ATTRIBUTION["cma"], ATTRIBUTION["clip"]]
        manifests[name] = m

    # ImageNet: pool of the published few-shot images heads the train / val lists.
    groups = load_fewshot_files(protocol / "fewshot_indices/imagenet")
    wnid_pos = {w: i for i, w in enumerate(in_wnids)}
    pool = {"train": {}, "val": {}}
    arrays = {}
    fname_re = re.compile(r"images/train/(n\d{8})/(n\d{8})_(\d+)\.JPEG$")
    for K, S, d in groups:
        check_group("imagenet", K, S, d)
        for part in ("train", "val"):
            for r in d["data"] if False else d[part]["data"]:
                mt = fname_re.search(r["impath"])
                assert mt and mt.group(1) == mt.group(2), r["impath"]
                assert wnid_pos[mt.group(1)] == r["label"], r
                pool[part][(r["label"], int(mt.group(3)))] = None
    keys = {part: sorted(pool[part]) for part in pool}  # (class, file number) order
    pos = {part: {k: i for i, k in enumerate(keys[part])} for part in pool}
    assert not set(keys["train"]) & set(keys["val"])
    for K, S, d in groups:
        for part in ("train", "val"):
            idx = [pos[part][(r["label"], int(fname_re.search(r["impath"]).group(3)))] for r in d[part]["data"]]
            arrays[f"shot_{K}-seed_{S}/{part}"] = np.asarray(idx, dtype=np.int32)
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
    common_in = {
        "schema": "cmm-manifest/1",
        "classnames": in_names,
        "wnids": in_wnids,
        "templates": {"coop": tip["imagenet"], "clip": in80},
        "default_templates": "coop",
        "attribution": [ATTRIBUTION["coop"], ATTRIBUTION["cma"], ATTRIBUTION["clip"]],
    }
    manifests["imagenet"] = {
        **{k: v for k, v in common_in.items() if k == "schema"},
        "name": "imagenet",
        "title": "ImageNet-1k (ILSVRC 2012)",
        "aliases": ["imagenet1k", "imagenet-1k", "ilsvrc2012", "in1k"],
        "kind": "coop",
        "folder": "imagenet",
        "image_dir": "images",
        "layout": (
            "imagenet/\n|-- images/\n|   |-- train/   (1000 folders n01440764 ..., n01440764_10026.JPEG "
            "...)\n|   |-- val/     (1000 folders n01440764 ..., the official validation images)"
        ),
        **{k: v for k, v in common_in.items() if k != "schema"},
        "num_classes": 1000,
        "split_source": {
            "type": "imagenet",
            "pool": "imagenet/pool.npz",
            "origin": (
                "train / val = the published few-shot pool (unique images of the shipped index files, "
                "held out of ImageNet train by cross_modal_adaptation) followed by the rest of images/train, "
                "split 80/20 by sha1 of the relative path; test = images/val (the official validation set)."
            ),
            "rest_val_fraction": 0.2,
        },
        "split_sizes": {
            "train_pool": len(keys["train"]),
            "val_pool": len(keys["val"]),
            "train+val": 1281167,
            "test": 50000,
        },
        "fewshot": {
            "file": "imagenet/fewshot.npz",
            "groups": [f"shot_{K}-seed_{S}" for K, S, _ in groups],
            "origin": "cross_modal_adaptation few-shot index files for ImageNet (shots 1, 2, 4, 8; seeds 1-5), "
            "re-indexed into the shipped pool; other groups (16 shots) are a seeded draw",
        },
        "source": {
            "homepage": "https://image-net.org/download.php",
            "instructions": "CoOp DATASETS.md: https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md",
            "citation": "Deng et al. ImageNet: A Large-Scale Hierarchical Image Database. CVPR 2009.",
        },
        "download": None,
        "download_note": (
            "ImageNet needs an account: download ILSVRC2012 train and val from "
            "https://image-net.org/download.php and arrange val into one folder per WordNet id."
        ),
        "license": (
            "ImageNet: terms of access at https://image-net.org/download.php (non-commercial research). Class "
            "names: OpenAI CLIP (MIT)."
        ),
    }
    subsets = {}
    for key in ("a", "r"):
        w = [t for t in (protocol / f"classnames/imagenet_{key}_wnids.txt").read_text().split() if t]
        idx = [int(t) for t in (protocol / f"classnames/imagenet_{key}_class_indices.txt").read_text().split()]
        assert len(w) == 200 and len(set(w)) == 200 and idx == [wnid_pos[x] for x in w], key
        subsets[key] = (w, idx)
    for name, info in SHIFTS.items():
        if info["subset"]:
            w, idx = subsets[info["subset"]]
        else:
            w, idx = in_wnids, list(range(1000))
        manifests[name] = {
            "schema": "cmm-manifest/1",
            "name": name,
            "title": info["title"],
            "aliases": info["aliases"],
            "kind": "shift",
            "folder": info["folder"],
            "image_dir": info["test_dir"],
            "layout": info["layout"],
            "classnames": [in_names[i] for i in idx],
            "wnids": w,
            "imagenet_index": idx,
            "num_classes": len(idx),
            "templates": common_in["templates"],
            "default_templates": "coop",
            "split_source": {
                "type": "class_folders",
                "split": "test",
                "class_dirs": info["class_dirs"],
                "origin": "every image under the class folders (sorted), test only; classes matched by "
                + ("ImageNet class index (folder name)" if info["class_dirs"] == "index" else "WordNet id"),
            },
            "split_sizes": {"test": info["size"]},
            "fewshot": None,
            "source": {
                "homepage": info["homepage"],
                "instructions": "CoOp DATASETS.md: https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md",
                "citation": info["citation"],
            },
            "download": {"archives": info["archives"]} if info.get("archives") else None,
            **({"download_note": info["download_note"]} if info.get("download_note") else {}),
            "license": info["license"],
            "attribution": [ATTRIBUTION["coop"], ATTRIBUTION["clip"]],
        }

    manifests["tiny"] = {
        "schema": "cmm-manifest/1",
        "name": "tiny",
        "title": "tiny (synthetic, for tests and demos)",
        "aliases": ["tiny-synthetic"],
        "kind": "synthetic",
        "folder": "tiny",
        "image_dir": "",
        "layout": "<cache-dir>/data/tiny/<split>/<class>/<n>.png (generated on first use)",
        "classnames": ["red square", "green circle", "blue stripes", "yellow cross", "purple checkerboard"],
        "num_classes": 5,
        "templates": {
            "coop": ["a photo of a {}."],
            "clip": ["a photo of a {}.", "a drawing of a {}.", "a {} pattern."],
        },
        "default_templates": "coop",
        "split_source": {
            "type": "synthetic",
            "per_class": {"train": 16, "val": 4, "test": 6},
            "image_size": 32,
            "seed": 0,
            "origin": "deterministic numpy drawing, written once under <cache-dir>/data/tiny/",
        },
        "split_sizes": {"train": 80, "val": 20, "test": 30},
        "fewshot": None,
        "source": {
            "homepage": "https://github.com/ (part of cmm-cache)",
            "instructions": "generated, needs no data root",
            "citation": "",
        },
        "download": None,
        "license": "MIT (generated by cmm-cache)",
        "attribution": [],
    }

    for name, m in manifests.items():
        (out / f"{name}.json").write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="/work/shared/protocol", type=Path)
    ap.add_argument("--out", default=REPO / "data_manifests", type=Path)
    a = ap.parse_args()
    build(a.protocol, a.out)
    total = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"wrote {a.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
