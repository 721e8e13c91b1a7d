"""The dataset registry: every manifest validates and its shipped data matches the protocol."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cmm_cache.datasets import manifests as mf
from cmm_cache.datasets.fewshot import load_published, parse_group, val_shots
from cmm_cache.errors import CmmError

PAPER = [
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
]
ALL = mf.list_datasets()
REPO = Path(__file__).resolve().parents[2]
# A subset of the published protocol files (DTD, FGVC-Aircraft, ImageNet names and shift classes); see its README.
PROTOCOL_DATA = REPO / "tests" / "data" / "protocol"
# What the subset can rebuild (with `tools/build_manifests.py --only`).
SUBSET = ["dtd", "fgvc_aircraft", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r", "tiny"]
# CoOp's class counts (paper Table / CoOp DATASETS.md).
NUM_CLASSES = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
    "imagenetv2": 1000,
    "imagenet_sketch": 1000,
    "imagenet_a": 200,
    "imagenet_r": 200,
    "tiny": 5,
}


def _gz(m, rel):
    return json.loads(gzip.decompress(mf.data_file(m, rel).read_bytes()))


def test_registry_holds_the_paper_datasets_and_tiny():
    assert sorted(ALL) == sorted(PAPER + ["tiny"])


@pytest.mark.parametrize("name", ALL)
def test_manifest_validates(name):
    m = mf.get_manifest(name)
    assert mf.validate_manifest(m) == []
    assert m["name"] == name and mf.resolve_name(name) == name
    assert len(m["classnames"]) == m["num_classes"] == NUM_CLASSES[name]
    assert set(m["templates"]) == {"coop", "clip"} and m["default_templates"] == "coop"
    assert all(t.count("{}") == 1 for ts in m["templates"].values() for t in ts)
    assert m["license"] and m["source"]["homepage"]
    if name != "tiny":
        assert m["attribution"] and m["layout"].startswith(m["folder"] + "/")
        # CoOp prompts class names with underscores replaced by spaces.
        assert not any("_" in c for c in m["classnames"])
        assert m.get("download") or m.get("download_note"), "say where a user gets the data"


@pytest.mark.parametrize("name", ALL)
def test_aliases_resolve(name):
    m = mf.get_manifest(name)
    for a in m.get("aliases", []):
        assert mf.resolve_name(a) == name
        assert mf.resolve_name(a.upper().replace("_", "-")) == name


def test_common_aliases():
    assert mf.resolve_name("DTD") == "dtd"
    assert mf.resolve_name("imagenet-sketch") == "imagenet_sketch"
    assert mf.resolve_name("ImageNet-A") == "imagenet_a"
    assert mf.resolve_name("flowers102") == "oxford_flowers"
    assert mf.resolve_name("nope") is None


def test_unknown_name_lists_valid_names():
    with pytest.raises(CmmError) as e:
        mf.get_manifest("imagenet-z")
    for n in ("dtd", "imagenet_sketch", "tiny"):
        assert n in e.value.message


SHIPPED = [n for n in ALL if mf.get_manifest(n)["split_source"]["type"] == "shipped"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_split_sizes_and_classes(name):
    m = mf.get_manifest(name)
    sp = _gz(m, m["split_source"]["file"])
    assert set(sp) == {"train", "val", "test"}
    for s, n in m["split_sizes"].items():
        assert len(sp[s]["paths"]) == len(sp[s]["labels"]) == n
        assert len(set(sp[s]["paths"])) == n
        assert sorted(set(sp[s]["labels"])) == list(range(m["num_classes"]))  # every class in every split
    assert not set(sp["train"]["paths"]) & set(sp["val"]["paths"])
    assert not set(sp["train"]["paths"]) & set(sp["test"]["paths"])


def _fewshot_labels(m):
    """(train labels by position, val labels by position, train paths, val paths) for the published indices."""
    src = m["split_source"]
    if src["type"] == "shipped":
        sp = _gz(m, src["file"])
        return (
            np.asarray(sp["train"]["labels"]),
            np.asarray(sp["val"]["labels"]),
            sp["train"]["paths"],
            sp["val"]["paths"],
        )
    if src["type"] == "imagenet":
        with np.load(mf.data_file(m, src["pool"])) as z:
            tl, vl = z["train_class"].astype(int), z["val_class"].astype(int)
            tp = [f"{c}/{n}" for c, n in zip(z["train_class"], z["train_number"])]
            vp = [f"{c}/{n}" for c, n in zip(z["val_class"], z["val_number"])]
        return tl, vl, tp, vp
    pool = _gz(m, src["pool"])
    out = []
    for part in ("train", "val"):
        size = m["split_sizes"][part]
        lab = np.full(size, -1)
        paths = [None] * size
        for i, p, l in zip(pool[part]["index"], pool[part]["paths"], pool[part]["labels"]):
            lab[i], paths[i] = l, p
        out += [lab, paths]
    return out[0], out[2], out[1], out[3]


FEWSHOT = [n for n in ALL if mf.get_manifest(n).get("fewshot")]


@pytest.mark.parametrize("name", FEWSHOT)
def test_published_fewshot_protocol(name):
    """K per class in train, min(K, 4) per class in val, disjoint, for every shipped shot/seed."""
    m = mf.get_manifest(name)
    groups = load_published(mf.data_file(m, m["fewshot"]["file"]))
    assert sorted(f"shot_{k}-seed_{s}" for k, s in groups) == sorted(m["fewshot"]["groups"])
    expected = (
        {(k, s) for k in (1, 2, 4, 8) for s in range(1, 6)}
        if name == "imagenet"
        else {(k, s) for k in (1, 2, 4, 8, 16) for s in (1, 2, 3)}
    )
    assert set(groups) == expected
    tl, vl, tp, vp = _fewshot_labels(m)
    C = m["num_classes"]
    for (k, s), (tr, va) in groups.items():
        assert tr.dtype == np.int64 and va.dtype == np.int64
        assert len(np.unique(tr)) == len(tr) and len(np.unique(va)) == len(va)
        assert np.all(np.bincount(tl[tr], minlength=C) == k), (k, s)
        assert np.all(np.bincount(vl[va], minlength=C) == val_shots(k)), (k, s)
        assert not {tp[i] for i in tr} & {vp[i] for i in va}, (k, s)


@pytest.mark.parametrize("key", ["a", "r"])
def test_imagenet_a_r_subsets(key):
    name = f"imagenet_{key}"
    m, inet = mf.get_manifest(name), mf.get_manifest("imagenet")
    assert len(m["wnids"]) == 200 and len(set(m["wnids"])) == 200
    assert set(m["wnids"]) <= set(inet["wnids"])
    assert [inet["wnids"][i] for i in m["imagenet_index"]] == m["wnids"]
    assert [inet["classnames"][i] for i in m["imagenet_index"]] == m["classnames"]
    assert m["imagenet_index"] == sorted(m["imagenet_index"])
    assert m["wnids"] == (PROTOCOL_DATA / f"classnames/imagenet_{key}_wnids.txt").read_text().split()
    indices = (PROTOCOL_DATA / f"classnames/imagenet_{key}_class_indices.txt").read_text().split()
    assert m["imagenet_index"] == [int(i) for i in indices]


@pytest.mark.parametrize("name", ["imagenetv2", "imagenet_sketch"])
def test_full_shift_sets(name):
    m, inet = mf.get_manifest(name), mf.get_manifest("imagenet")
    assert m["imagenet_index"] == list(range(1000)) and m["wnids"] == inet["wnids"]
    assert (
        m["templates"] == inet["templates"] and len(m["templates"]["coop"]) == 7 and len(m["templates"]["clip"]) == 80
    )


def test_imagenet_names_and_wnids():
    m = mf.get_manifest("imagenet")
    assert len(set(m["wnids"])) == 1000 and m["wnids"][0] == "n01440764" and m["classnames"][0] == "tench"
    assert m["templates"]["coop"][0] == "itap of a {}."


def test_user_manifest_accepted_and_bad_one_rejected(tmp_path):
    m = mf.public(mf.get_manifest("tiny"))
    m["name"] = "mine"
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(m))
    assert mf.load_manifest_file(f)["name"] == "mine"
    m["templates"] = {"coop": ["no placeholder"]}
    f.write_text(json.dumps(m))
    with pytest.raises(CmmError, match="placeholder|\\{\\}"):
        mf.load_manifest_file(f)
    del m["classnames"]
    f.write_text(json.dumps(m))
    with pytest.raises(CmmError, match="classnames"):
        mf.load_manifest_file(f)


def test_manifest_hash_tracks_content():
    a, b = mf.get_manifest("dtd"), mf.get_manifest("dtd")
    assert mf.manifest_sha256(a) == mf.manifest_sha256(b)
    b["templates"]["coop"] = ["a photo of {}."]
    assert mf.manifest_sha256(a) != mf.manifest_sha256(b)
    assert mf.manifest_sha256(a) != mf.manifest_sha256(mf.get_manifest("eurosat"))


def test_data_manifests_stay_small():
    total = sum(p.stat().st_size for p in mf.manifests_dir().rglob("*") if p.is_file())
    assert total < 4_000_000, total
    lic = mf.manifests_dir() / "LICENSES"
    assert (lic / "ATTRIBUTION.md").is_file() and (lic / "CoOp_LICENSE").is_file()


def _protocol_json(rel: str):
    return json.loads(gzip.decompress((PROTOCOL_DATA / (rel + ".gz")).read_bytes()))


@pytest.fixture(scope="module")
def protocol(tmp_path_factory) -> Path:
    """The protocol subset as the builder reads it: a folder of plain files (the *.gz ones decompressed)."""
    out = tmp_path_factory.mktemp("protocol")
    for f in PROTOCOL_DATA.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(PROTOCOL_DATA)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".gz":
            (out / rel.with_suffix("")).write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copyfile(f, out / rel)
    return out


def test_shipped_data_matches_protocol_files():
    """The compact split lists are the CoOp split file and the few-shot arrays the published files, entry for entry."""
    m = mf.get_manifest("dtd")
    sp = _gz(m, m["split_source"]["file"])
    orig = _protocol_json("coop_splits/split_zhou_DescribableTextures.json")
    for s in ("train", "val", "test"):
        assert sp[s]["paths"] == [r[0] for r in orig[s]] and sp[s]["labels"] == [r[1] for r in orig[s]]
    assert m["classnames"] == sorted({r[2] for r in orig["train"]})
    for name in ("dtd", "fgvc_aircraft"):
        m = mf.get_manifest(name)
        shipped = load_published(mf.data_file(m, m["fewshot"]["file"]))
        files = sorted((PROTOCOL_DATA / "fewshot_indices" / name).glob("shot_*-seed_*.json.gz"))
        assert len(files) == len(shipped) == 15
        for f in files:
            d = json.loads(gzip.decompress(f.read_bytes()))
            k, seed = parse_group(f.name.removesuffix(".json.gz"))
            tr, va = shipped[(k, seed)]
            assert tr.tolist() == d["train"]["indices"] and va.tolist() == d["val"]["indices"], (name, f.name)


def _build(protocol: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools/build_manifests.py"), "--protocol", str(protocol), "--out", str(out)]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True)


def test_build_script_reproduces_the_shipped_data(protocol, tmp_path):
    """A fresh build of the subset is byte-identical to the shipped files; --check says so, and says when not."""
    r = _build(protocol, mf.manifests_dir(), "--only", ",".join(SUBSET), "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "dm"
    shutil.copytree(mf.manifests_dir(), out, ignore=shutil.ignore_patterns("__pycache__"))
    r = _build(protocol, out, "--only", ",".join(SUBSET))  # writing over a copy leaves it identical
    assert r.returncode == 0, r.stderr
    built = [p for n in SUBSET for p in [out / f"{n}.json", *(out / n).rglob("*")] if p.is_file()]
    built += list((out / "LICENSES").iterdir())
    rels = {str(p.relative_to(out)) for p in built}
    assert {"dtd/split.json.gz", "fgvc_aircraft/pool.json.gz", "imagenet_r.json", "LICENSES/CoOp_LICENSE"} <= rels
    for p in built:
        rel = p.relative_to(out)
        assert p.read_bytes() == (mf.manifests_dir() / rel).read_bytes(), rel
    assert (out / "imagenet.json").read_bytes() == (mf.manifests_dir() / "imagenet.json").read_bytes()  # not touched
    (out / "dtd" / "fewshot.npz").write_bytes(b"changed")
    (out / "tiny.json").unlink()
    r = _build(protocol, out, "--only", ",".join(SUBSET), "--check")
    assert r.returncode == 1
    assert "differs: dtd/fewshot.npz" in r.stdout and "missing in" in r.stdout and "tiny.json" in r.stdout


def test_build_script_needs_a_protocol_folder(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "tools/build_manifests.py"), "--out", str(tmp_path)], text=True, capture_output=True
    )
    assert r.returncode == 2 and "--protocol" in r.stderr
    r = _build(tmp_path / "nowhere", tmp_path)
    assert r.returncode != 0 and "protocol folder not found" in r.stderr
    r = subprocess.run(
        [sys.executable, str(REPO / "tools/build_manifests.py"), "--help"], text=True, capture_output=True
    )
    assert "coop_splits/" in r.stdout and "fewshot_indices/" in r.stdout and "shared" not in r.stdout


def test_every_split_source_kind_has_a_reader():
    from cmm_cache.datasets.registry import SPLIT_READERS

    assert set(SPLIT_READERS) == set(mf.SPLIT_SOURCES)
    assert {mf.get_manifest(n)["split_source"]["type"] for n in ALL} <= set(mf.SPLIT_SOURCES)
    m = mf.public(mf.get_manifest("tiny"))
    m["split_source"] = {"type": "made_up"}
    assert any("split_source.type must be one of" in p and "class_folders" in p for p in mf.validate_manifest(m))


def test_cli_datasets_json_and_table(monkeypatch):
    from cmm_cache.cli.main import main

    r = CliRunner().invoke(main, ["datasets", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert sorted(d["name"] for d in out["datasets"]) == sorted(ALL)
    food = next(d for d in out["datasets"] if d["name"] == "food101")
    assert food["split_file_needed"] == "split_zhou_Food101.json" and not food["split_file_shipped"]
    r = CliRunner().invoke(main, ["datasets"])
    assert r.exit_code == 0 and "registered datasets" in r.output and "dtd" in r.output
    r = CliRunner().invoke(main, ["datasets", "imagenet-r", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "imagenet_r"
    r = CliRunner().invoke(main, ["datasets", "nope"])
    assert r.exit_code == 2 and "Registered" in r.output


def test_user_manifest_folder_joins_the_registry(tmp_path, monkeypatch):
    from cmm_cache.cli.main import main

    from cmm_cache.datasets.registry import load_dataset

    m = mf.public(mf.get_manifest("tiny"))
    m.update(name="tiny2", aliases=["tiny-two"])
    (tmp_path / "tiny2.json").write_text(json.dumps(m))
    assert mf.resolve_name("tiny-two") is None
    monkeypatch.setenv("CMM_DATASET_MANIFESTS", str(tmp_path))
    assert mf.resolve_name("tiny-two") == "tiny2" and "tiny2" in mf.list_datasets()
    assert load_dataset("tiny-two").name == "tiny2"
    r = CliRunner().invoke(main, ["datasets", "--json"])
    assert "tiny2" in [d["name"] for d in json.loads(r.stdout)["datasets"]]
    r = CliRunner().invoke(main, ["datasets", str(tmp_path / "tiny2.json"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "tiny2"
    m.update(name="dtd2", aliases=["dtd"])  # an alias clash with a shipped dataset is refused
    (tmp_path / "dtd2.json").write_text(json.dumps(m))
    with pytest.raises(CmmError, match="used by both"):
        mf.list_datasets()


def test_user_manifest_data_files_must_be_beside_it(tmp_path):
    m = mf.public(mf.get_manifest("dtd"))
    m.update(name="mine", aliases=[], fewshot={"file": "mine/fewshot.npz", "groups": []})
    m["split_source"] = {"type": "shipped", "file": "mine/split.json.gz"}
    (tmp_path / "mine.json").write_text(json.dumps(m))
    with pytest.raises(CmmError) as e:
        mf.load_manifest_file(tmp_path / "mine.json")
    assert "'mine/split.json.gz' not found next to the manifest" in e.value.message
    assert "'mine/fewshot.npz' not found" in e.value.message
