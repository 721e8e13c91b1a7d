"""Static facts about each dataset for `tools/build_manifests.py`: names, aliases, CoOp layout, sizes, sources.

Everything here is written by hand; everything derived from the protocol files
(class names, templates, split lists, few-shot indices) is read by the builder.
"""

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

IMAGENET = dict(
    title="ImageNet-1k (ILSVRC 2012)",
    aliases=["imagenet1k", "imagenet-1k", "ilsvrc2012", "in1k"],
    folder="imagenet",
    image_dir="images",
    layout=(
        "imagenet/\n|-- images/\n|   |-- train/   (1000 folders n01440764 ..., n01440764_10026.JPEG "
        "...)\n|   |-- val/     (1000 folders n01440764 ..., the official validation images)"
    ),
    split_origin=(
        "train / val = the published few-shot pool (unique images of the shipped index files, "
        "held out of ImageNet train by cross_modal_adaptation) followed by the rest of images/train, "
        "split 80/20 by sha1 of the relative path; test = images/val (the official validation set)."
    ),
    fewshot_origin=(
        "cross_modal_adaptation few-shot index files for ImageNet (shots 1, 2, 4, 8; seeds 1-5), "
        "re-indexed into the shipped pool; other groups (16 shots) are a seeded draw"
    ),
    homepage="https://image-net.org/download.php",
    citation="Deng et al. ImageNet: A Large-Scale Hierarchical Image Database. CVPR 2009.",
    download_note=(
        "ImageNet needs an account: download ILSVRC2012 train and val from "
        "https://image-net.org/download.php and arrange val into one folder per WordNet id."
    ),
    license=(
        "ImageNet: terms of access at https://image-net.org/download.php (non-commercial research). Class "
        "names: OpenAI CLIP (MIT)."
    ),
)

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


def tiny_manifest() -> dict:
    return {
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
