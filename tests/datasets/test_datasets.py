"""Dataset reading: data root resolution, missing-file messages, tiny, custom data, download."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmm_cache.cache.locate import find_cache
from cmm_cache.datasets import download as dsm
from cmm_cache.datasets import manifests as mf
from cmm_cache.datasets.fewshot import check_subset
from cmm_cache.datasets.names import dataset_key
from cmm_cache.datasets.registry import load_dataset
from cmm_cache.errors import CmmError


def _touch(p: Path, data: bytes = b"") -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _png(p: Path, colour=(10, 20, 30)) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(p)


# ---------------------------------------------------------------- tiny


def test_tiny_needs_no_data_root(tmp_path):
    ds = load_dataset("tiny")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 80, "val": 20, "test": 30}
    assert ds.num_classes == 5 and ds.default_templates == "coop" and not ds.is_shift
    ds.verify()
    assert all(Path(p).is_file() and Path(p).suffix == ".png" for p in ds.splits["test"].paths)
    assert str(ds.root).startswith(os.environ["CMM_CACHE_DIR"])
    for s in ds.splits.values():
        assert np.all(np.bincount(s.labels, minlength=5) == len(s) // 5)


def test_tiny_is_deterministic_and_regenerated(tmp_path):
    a = load_dataset("tiny", cache_root=tmp_path / "a")
    b = load_dataset("tiny", cache_root=tmp_path / "b")
    assert a.manifest_sha256 == b.manifest_sha256
    for pa, pb in zip(a.splits["train"].paths, b.splits["train"].paths):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    gone = Path(a.splits["val"].paths[3])
    gone.unlink()
    again = load_dataset("tiny", cache_root=tmp_path / "a")
    assert gone.is_file() and gone.read_bytes() == Path(b.splits["val"].paths[3]).read_bytes()
    assert not [p for p in (tmp_path / "a" / "data").iterdir() if p.name.startswith(".tiny")]
    again.verify()


def test_tiny_classes_are_learnable():
    """The brightest colour of an image, matched to the nearest class's mean, separates the classes."""
    ds = load_dataset("tiny")

    def feats(split):
        return np.stack([np.asarray(Image.open(p), dtype=np.float32).ravel() / 255 for p in ds.splits[split].paths])

    xtr, ytr = feats("train"), ds.splits["train"].labels
    xte, yte = feats("test"), ds.splits["test"].labels
    colour_tr = np.stack([xtr[ytr == c].reshape(-1, 32 * 32, 3).max(1).mean(0) for c in range(5)])
    pred = np.argmin(((xte.reshape(len(xte), -1, 3).max(1)[:, None, :] - colour_tr[None]) ** 2).sum(-1), 1)
    assert (pred == yte).mean() >= 0.8


# ---------------------------------------------------------------- registered datasets


def _dtd_root(tmp_path, present=None):
    """A data root with dtd/images holding the listed relative paths (default: none)."""
    root = tmp_path / "data"
    (root / "dtd" / "images").mkdir(parents=True)
    for rel in present or []:
        _touch(root / "dtd" / "images" / rel)
    return root


def test_missing_data_root_is_one_clear_error():
    with pytest.raises(CmmError) as e:
        load_dataset("dtd")
    text = str(e.value)
    assert "--data-root" in text and "CMM_DATA_ROOT" in text and "dtd/" in text


def test_data_root_from_environment(tmp_path, monkeypatch):
    root = _dtd_root(tmp_path)
    monkeypatch.setenv("CMM_DATA_ROOT", str(root))
    ds = load_dataset("describable-textures")
    assert ds.name == "dtd" and ds.splits["train"].paths[0].startswith(str(root / "dtd" / "images"))


def test_relative_data_root_gives_absolute_paths(tmp_path, monkeypatch):
    _dtd_root(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("dtd", "data")
    assert os.path.isabs(ds.splits["val"].paths[0]) and ds.splits["val"].paths[0].startswith(str(tmp_path))


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(CmmError) as e:
        load_dataset("oxford_pets", tmp_path)
    assert "oxford_pets" in e.value.message and "images/" in e.value.hint and "robots.ox.ac.uk" in e.value.hint


def test_dtd_splits_resolve_and_verify_checks_only_requested_rows(tmp_path):
    ds0 = load_dataset("dtd", _dtd_root(tmp_path / "x"))
    tr, va = ds0.fewshot(2, 1)
    needed = [Path(ds0.splits["train"].paths[i]).relative_to(ds0.root / "images") for i in tr]
    needed += [Path(ds0.splits["val"].paths[i]).relative_to(ds0.root / "images") for i in va]
    root = _dtd_root(tmp_path, [str(p) for p in needed])
    ds = load_dataset("dtd", root)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 2820, "val": 1128, "test": 1692}
    assert ds.classnames[0] == "banded" and ds.templates["coop"] == ["{} texture."]
    assert ds.splits["test"].labels.dtype == np.int64
    ds.verify({"train": tr, "val": va})  # all present
    with pytest.raises(CmmError) as e:
        ds.verify({"train": tr, "val": va, "test": None})
    msg = str(e.value)
    assert e.value.message.startswith("1692 of ") and "missing" in e.value.message
    assert ds.splits["test"].paths[0] in msg and ds.splits["test"].paths[5] not in msg  # first few only
    assert "and 1687 more" in msg and "Expected layout" in msg and "dtd/" in msg and "--download" in msg


def test_manifest_hash_depends_on_dataset(tmp_path):
    a = load_dataset("dtd", _dtd_root(tmp_path / "a"))
    b = load_dataset("dtd", _dtd_root(tmp_path / "b"))
    assert a.manifest_sha256 == b.manifest_sha256 and len(a.manifest_sha256) == 64
    assert a.manifest_sha256 != load_dataset("tiny").manifest_sha256


def _write_food_split(root, consistent=True):
    m = mf.get_manifest("food101")
    pool = json.loads(gzip.decompress(mf.data_file(m, m["split_source"]["pool"]).read_bytes()))
    split = {}
    for part in ("train", "val", "test"):
        n = m["split_sizes"][part]
        rows = [[f"{m['coop_classnames'][0]}/fake{part}{i}.jpg", 0, m["coop_classnames"][0]] for i in range(n)]
        if part in pool:
            for i, p, lab in zip(pool[part]["index"], pool[part]["paths"], pool[part]["labels"]):
                rows[i] = [p, lab, m["coop_classnames"][lab]]
        split[part] = rows
    if not consistent:
        i = pool["train"]["index"][0]
        split["train"][i][0] = "apple_pie/other.jpg"
    (root / "food-101").mkdir(parents=True, exist_ok=True)
    (root / "food-101" / "split_zhou_Food101.json").write_text(json.dumps(split))


def test_unshipped_split_file_says_where_to_get_it(tmp_path):
    (tmp_path / "food-101" / "images").mkdir(parents=True)
    with pytest.raises(CmmError) as e:
        load_dataset("food101", tmp_path)
    text = str(e.value)
    assert "split_zhou_Food101.json" in text and "drive.google.com" in text
    assert str(tmp_path / "food-101" / "split_zhou_Food101.json") in text
    _write_food_split(tmp_path)
    ds = load_dataset("food101", tmp_path)
    assert len(ds.splits["train"]) == 50500 and ds.classnames[0] == "apple pie"
    tr, va = ds.fewshot(16, 3)
    assert ds.is_published(16, 3)
    assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, 16, 101) == []
    _write_food_split(tmp_path, consistent=False)
    with pytest.raises(CmmError, match="differ from those the published few-shot indices"):
        load_dataset("food101", tmp_path)


def test_fgvc_reads_official_variant_lists(tmp_path):
    m = mf.get_manifest("fgvc_aircraft")
    pool = json.loads(gzip.decompress(mf.data_file(m, m["split_source"]["pool"]).read_bytes()))
    d = tmp_path / "fgvc_aircraft"
    with pytest.raises(CmmError, match="variant"):
        (d / "images").mkdir(parents=True)
        load_dataset("fgvc", tmp_path)
    (d / "variants.txt").write_text("\n".join(m["coop_classnames"]) + "\n")
    for part in ("train", "val", "test"):
        lines = [
            f"9{part[0] == 't' and 1 or 2}{i:05d} {m['coop_classnames'][i % 100]}"
            for i in range(m["split_sizes"][part])
        ]
        for i, p, lab in zip(
            pool.get(part, {}).get("index", []),
            pool.get(part, {}).get("paths", []),
            pool.get(part, {}).get("labels", []),
        ):
            lines[i] = f"{p[:-4]} {m['coop_classnames'][lab]}"
        (d / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset("fgvc", tmp_path)
    assert ds.classnames[0] == "707-320" and len(ds.splits["val"]) == 3333
    tr, va = ds.fewshot(4, 1)
    assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, 4, 100) == []
    with pytest.raises(CmmError, match=r"^800 of 800 image files"):
        ds.verify({"train": tr, "val": va})


def test_shift_sets_by_wnid_and_index(tmp_path):
    for name in ("imagenet_r", "imagenetv2"):
        m = mf.get_manifest(name)
        d = tmp_path / m["folder"] / m["image_dir"]
        keys = m["wnids"] if m["split_source"]["class_dirs"] == "wnid" else [str(i) for i in m["imagenet_index"]]
        for k in keys[:-1]:
            _touch(d / k / "x.jpg")
        with pytest.raises(CmmError, match="1 of"):
            load_dataset(name, tmp_path)
        _touch(d / keys[-1] / "x.jpg")
        _touch(d / keys[-1] / "y.JPEG")
        ds = load_dataset(name, tmp_path)
        assert list(ds.splits) == ["test"] and ds.is_shift
        assert len(ds.splits["test"]) == len(keys) + 1
        assert ds.splits["test"].labels[-1] == len(keys) - 1
        assert ds.imagenet_index == m["imagenet_index"] and ds.wnids == m["wnids"]
        assert any("expects" in w for w in ds.warnings)
        ds.verify()


def test_imagenet_pool_rest_and_16_shots(tmp_path):
    m = mf.get_manifest("imagenet")
    img = tmp_path / "imagenet" / "images"
    for w in m["wnids"]:
        (img / "train" / w).mkdir(parents=True)
        _touch(img / "val" / w / f"ILSVRC2012_val_{w}.JPEG")
    for i in range(50):  # extra (non-pool) train images of class 0
        _touch(img / "train" / m["wnids"][0] / f"{m['wnids'][0]}_9{i:04d}.JPEG")
    ds = load_dataset("imagenet", tmp_path)
    npool = m["split_sizes"]["train_pool"] + m["split_sizes"]["val_pool"]
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == npool + 50
    assert 0 < len(ds.splits["val"]) - m["split_sizes"]["val_pool"] < 50  # the rest is split ~80/20
    assert len(ds.splits["test"]) == 1000 and ds.splits["test"].paths[0].startswith(str(img / "val"))
    assert ds.splits["train"].paths[0].startswith(str(img / "train" / m["wnids"][0]))
    tr, va = ds.fewshot(8, 5)
    assert ds.is_published(8, 5) and not ds.is_published(16, 1)
    for k in (8, 16):
        tr, va = ds.fewshot(k, 1)
        assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, k, 1000) == []
        assert not {ds.splits["train"].paths[i] for i in tr} & {ds.splits["val"].paths[i] for i in va}
    with pytest.raises(CmmError, match="missing"):
        ds.verify({"train": tr})
    ds.verify({"test": None})


def test_imagenet_flat_val_is_explained(tmp_path):
    img = tmp_path / "imagenet" / "images"
    (img / "train").mkdir(parents=True)
    _touch(img / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(CmmError, match="one folder per WordNet id|lacks 1000"):
        load_dataset("imagenet", tmp_path)


# ---------------------------------------------------------------- custom data


def _folder(tmp_path, classes=("golden_retriever", "tabby_cat", "zebra"), n=10):
    root = tmp_path / "pets"
    for c, name in enumerate(classes):
        for i in range(n):
            _png(root / name / f"{i}.png", (c * 40, i, 0))
    return root


def test_image_folder_seeded_split(tmp_path):
    root = _folder(tmp_path)
    ds = load_dataset(str(root))
    assert ds.classnames == ["golden retriever", "tabby cat", "zebra"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 15, "val": 6, "test": 9}  # 50/20/30 per class
    paths = [set(v.paths) for v in ds.splits.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert load_dataset(str(root)).splits["train"].paths == ds.splits["train"].paths  # deterministic
    assert load_dataset(str(root), split_seed=1).splits["train"].paths != ds.splits["train"].paths
    ds.verify()
    assert ds.max_shots() == 2  # 5 train, 2 val per class
    with pytest.raises(CmmError, match="has 2 val image"):  # 2 val images per class, 4 needed
        ds.fewshot(4, 1)
    tr, va = ds.fewshot(2, 1)
    assert check_subset(tr, va, ds.splits["train"].labels, ds.splits["val"].labels, 2, 3) == []
    assert ds.manifest["split_source"]["split"] == "seeded"


def test_image_folder_with_names_file_and_given_split(tmp_path):
    root = tmp_path / "given"
    for split, n in (("train", 6), ("test", 3)):
        for c in ("n001", "n002"):
            for i in range(n):
                _png(root / split / c / f"{i}.png")
    (root / "classnames.txt").write_text("n002 second thing\nn001 first thing\n")
    ds = load_dataset(str(root))
    assert ds.classnames == ["first thing", "second thing"]
    assert len(ds.splits["test"]) == 6 and len(ds.splits["train"]) + len(ds.splits["val"]) == 12
    assert np.all(np.bincount(ds.splits["val"].labels) >= 1)
    assert all("/test/" in p for p in ds.splits["test"].paths)


def test_image_folder_too_small_class(tmp_path):
    root = _folder(tmp_path, n=2)
    with pytest.raises(CmmError, match="at least 3"):
        load_dataset(str(root))


def test_csv_with_names_and_split(tmp_path):
    (tmp_path / "img").mkdir()
    rows = ["path,label,split"]
    for i in range(12):
        lab = ["cat", "dog"][i % 2]
        split = "test" if i < 4 else ("validation" if i < 6 else "train")
        _png(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{lab},{split}")
    f = tmp_path / "data.csv"
    f.write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(f))
    assert ds.classnames == ["cat", "dog"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 4}
    assert ds.splits["train"].paths[0] == str(tmp_path / "img" / "6.png")
    ds.verify()


def test_csv_int_labels_names_file_seeded_split(tmp_path):
    rows = [f"/abs/{i}.jpg,{i % 3}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    (tmp_path / "names.txt").write_text("apple\nbanana\ncherry\n")
    ds = load_dataset(str(tmp_path / "d.csv"), classnames_file=tmp_path / "names.txt")
    assert ds.classnames == ["apple", "banana", "cherry"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 15, "val": 6, "test": 9}
    with pytest.raises(CmmError) as e:
        ds.verify({"test": None})
    assert e.value.message.startswith("9 of 9 image files") and "/abs/" in e.value.hint


def test_csv_errors(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("a.jpg\n")
    with pytest.raises(CmmError, match="columns"):
        load_dataset(str(f))
    f.write_text("a.jpg,cat,train\nb.jpg,dog\n")
    with pytest.raises(CmmError, match="some rows give a split"):
        load_dataset(str(f))
    with pytest.raises(CmmError, match="not found"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_user_manifest_json(tmp_path):
    m = mf.public(mf.get_manifest("dtd"))
    m.update(name="mytex", aliases=[], classnames=["a", "b"], num_classes=2, fewshot=None, split_sizes={})
    split = {
        s: {
            "paths": [f"a/{s}{i}.jpg" for i in range(3)] + [f"b/{s}{i}.jpg" for i in range(3)],
            "labels": [0, 0, 0, 1, 1, 1],
        }
        for s in ("train", "val", "test")
    }
    (tmp_path / "mytex").mkdir()
    with gzip.open(tmp_path / "mytex" / "split.json.gz", "wt") as fh:
        json.dump(split, fh)
    m["split_source"] = {"type": "shipped", "file": "mytex/split.json.gz"}
    m["folder"] = "mytex-data"
    m["layout"] = "mytex-data/\n|-- images/"
    (tmp_path / "mytex.json").write_text(json.dumps(m))
    root = tmp_path / "root"
    (root / "mytex-data" / "images").mkdir(parents=True)
    ds = load_dataset(str(tmp_path / "mytex.json"), root)
    assert ds.name == "mytex" and ds.classnames == ["a", "b"] and len(ds.splits["val"]) == 6
    assert ds.splits["val"].paths[0] == str(root / "mytex-data" / "images" / "a" / "val0.jpg")
    tr, va = ds.fewshot(2, 1)
    assert len(tr) == 4 and len(va) == 4


def test_registered_name_wins_over_cwd_folder(tmp_path, monkeypatch):
    _folder(tmp_path / "w", n=3)
    monkeypatch.chdir(tmp_path / "w")
    os.rename("pets", "tiny")
    assert load_dataset("tiny").num_classes == 5
    assert load_dataset("./tiny").num_classes == 3


# ---------------------------------------------------------------- download


def _dtd_archive(path: Path, files):
    with tarfile.open(path, "w:gz") as t:
        for rel in files:
            data = io.BytesIO()
            Image.new("RGB", (4, 4)).save(data, format="JPEG")
            info = tarfile.TarInfo(f"dtd/images/{rel}")
            info.size = len(data.getvalue())
            data.seek(0)
            t.addfile(info, data)
        info = tarfile.TarInfo("dtd/README.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))


def test_download_from_local_mirror(tmp_path, monkeypatch):
    m = mf.get_manifest("dtd")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = ["banded/banded_0117.jpg", "banded/banded_0142.jpg"]
    _dtd_archive(mirror / "dtd-r1.0.1.tar.gz", files)
    monkeypatch.setenv("CMM_DOWNLOAD_BASE", str(mirror))
    root = tmp_path / "data"
    ds = load_dataset("dtd", root, download=True)
    assert (root / "dtd" / "images" / files[0]).is_file() and (root / "dtd" / "README.txt").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["dtd"]  # no partial folders or archives left
    ds.verify({"train": np.array([ds.splits["train"].paths.index(str(root / "dtd" / "images" / files[0]))])})
    # file:// URLs work as the mirror base too; an existing folder is kept, not clobbered.
    monkeypatch.setenv("CMM_DOWNLOAD_BASE", mirror.as_uri())
    (root / "dtd" / "images" / "mine.txt").write_text("user file")
    (root / "dtd" / "README.txt").unlink()
    dsm.download(m, root)
    assert (root / "dtd" / "images" / "mine.txt").read_text() == "user file"
    assert (root / "dtd" / "README.txt").read_bytes() == b"hi"  # a missing entry is added
    assert sorted(p.name for p in root.iterdir()) == ["dtd"]


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dtd-r1.0.1.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setenv("CMM_DOWNLOAD_BASE", str(mirror))
    root = tmp_path / "data"
    with pytest.raises(CmmError):
        dsm.download("dtd", root)
    assert list(root.iterdir()) == []
    monkeypatch.setenv("CMM_DOWNLOAD_BASE", str(tmp_path / "empty"))
    with pytest.raises(CmmError, match="Could not download"):
        dsm.download("dtd", root)
    assert list(root.iterdir()) == []


def test_download_refuses_unsafe_archive(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "dtd-r1.0.1.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    monkeypatch.setenv("CMM_DOWNLOAD_BASE", str(mirror))
    with pytest.raises(CmmError, match="unsafe"):
        dsm.download("dtd", tmp_path / "data")
    assert not (tmp_path / "escape.txt").exists()


def test_no_public_source_says_where_to_get_it(tmp_path):
    with pytest.raises(CmmError) as e:
        dsm.download("imagenet", tmp_path)
    assert "image-net.org" in str(e.value) and "imagenet/" in str(e.value)


def test_tsv_is_tab_separated_and_keyed_as_a_path(tmp_path, monkeypatch):
    """`--dataset data.tsv` loads as your own list (tab-separated) and gets a cache folder with the path hash."""
    monkeypatch.chdir(tmp_path)
    rows = []
    for i in range(9):
        _png(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png\t{['cat', 'dog, spotted', 'eel'][i % 3]}")
    Path("data.tsv").write_text("path\tlabel\n" + "\n".join(rows) + "\n")
    ds = load_dataset("data.tsv")
    assert ds.name == "data" and ds.classnames == ["cat", "dog, spotted", "eel"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert dataset_key("data.tsv") == dataset_key(str(tmp_path / "data.tsv")) != "data"
    assert dataset_key("data.tsv").startswith("data-")


PROTOCOL_MEMBERS = (
    "max_shots",
    "verify",
    "fewshot",
    "is_published",
    "is_shift",
    "manifest_sha256",
    "templates",
    "default_templates",
    "classnames",
    "wnids",
    "imagenet_index",
    "splits",
    "name",
    "fewshot_indices",
)


def test_every_dataset_has_the_members_extract_uses(tmp_path):
    """Registered, shift, tiny, folder and CSV datasets all answer the same members plainly."""
    m = mf.get_manifest("imagenet_a")
    for w in m["wnids"]:
        _touch(tmp_path / m["folder"] / m["image_dir"] / w / "a.jpg")
    (f := tmp_path / "l.csv").write_text("\n".join(f"/x/{i}.jpg,{i % 2}" for i in range(8)))
    sets = [
        load_dataset("tiny"),
        load_dataset("dtd", _dtd_root(tmp_path / "r")),
        load_dataset("imagenet_a", tmp_path),
        load_dataset(str(_folder(tmp_path, n=4))),
        load_dataset(str(f)),
    ]
    for ds in sets:
        for name in PROTOCOL_MEMBERS:
            assert hasattr(type(ds), name) or name in ds.__dict__, (ds.name, name)
        assert isinstance(ds.max_shots(), int) and isinstance(ds.is_shift, bool) and len(ds.manifest_sha256) == 64
        assert ds.default_templates in ds.templates and set(ds.splits) <= {"train", "val", "test"}
        if ds.is_shift:
            assert ds.max_shots() == 0 and ds.wnids and len(ds.imagenet_index) == ds.num_classes
        else:
            tr, va = ds.fewshot(1, 1)
            assert len(tr) == len(va) == ds.num_classes and ds.is_published(1, 1) == (ds.name == "dtd")
    assert sets[1].wnids is None and sets[1].imagenet_index is None and not sets[1].is_shift


def test_describe_says_how_the_split_was_made(tmp_path):
    ds = load_dataset(str(_folder(tmp_path)))
    d = ds.describe()
    assert d["name"] == "pets" and d["num_classes"] == 3 and d["split_sizes"] == {"train": 15, "val": 6, "test": 9}
    assert d["classes"][0] == {"name": "golden retriever", "images": {"train": 5, "val": 2, "test": 3}}
    assert d["split"] == "seeded per class: 50/20/30 % train/val/test, seed 0, every class in every split"
    assert d["max_shots"] == 2 and d["published_fewshot"] == []
    given = tmp_path / "given"
    for split, n in (("train", 5), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _png(given / split / c / f"{i}.png")
    assert load_dataset(str(given)).describe()["split"].startswith("train/test given by the train/ val/ test/ sub")
    assert load_dataset("dtd", _dtd_root(tmp_path / "r")).describe()["published_fewshot"][0] == "shot_1-seed_1"


def test_cli_datasets_shows_your_folder_and_csv(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from cmm_cache.cli.main import main

    root = _folder(tmp_path)
    r = CliRunner().invoke(main, ["datasets", str(root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["name"] == "pets" and out["split_sizes"] == {"train": 15, "val": 6, "test": 9}
    assert out["cache_folder"] == dataset_key(str(root)) and out["split"].startswith("seeded per class")
    assert [c["name"] for c in out["classes"]] == ["golden retriever", "tabby cat", "zebra"]
    r = CliRunner().invoke(main, ["datasets", str(root)])
    assert r.exit_code == 0 and "golden retriever" in r.output and "seeded per class" in r.output
    assert "--dataset pets" in r.output and dataset_key(str(root)) in r.output
    monkeypatch.chdir(tmp_path)
    Path("list.csv").write_text(
        "\n".join(f"pets/zebra/{i}.png,zebra,{'train' if i < 6 else 'test'}" for i in range(10))
    )
    r = CliRunner().invoke(main, ["datasets", "list.csv", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["name"] == "list" and out["split_sizes"]["test"] == 4 and "split column" in out["split"]
    r = CliRunner().invoke(main, ["datasets", "./nothing-here", "--json"])
    assert r.exit_code == 2 and "not found" in json.loads(r.stdout)["error"]


def test_your_dataset_has_one_name(tmp_path):
    """`extract --dataset path/to/dtd10` -> <cache-dir>/dtd10-<8 hex>/tiny.h5; the cache, the Dataset and
    `--dataset dtd10` all say dtd10."""
    from cmm_cache.cache.reader import open_cache
    from cmm_cache.extract.pipeline import extract

    data = _folder(tmp_path / "path" / "to", n=5)
    data = data.rename(data.parent / "dtd10")
    cache_root = tmp_path / "cache-dir"
    r = extract(str(data), "tiny", cache_root=cache_root, shots=[1], seeds=[1], batch_size=8, num_workers=0)
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:8]
    assert Path(r.path) == cache_root / f"dtd10-{digest}" / "tiny.h5"
    assert load_dataset(str(data)).name == open_cache(r.path).dataset_name == "dtd10"
    assert find_cache("dtd10", "tiny", cache_root) == Path(r.path) == find_cache(str(data), "tiny", cache_root)
