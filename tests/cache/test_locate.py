"""Where caches and runs live (--cache-dir, env, XDG, home), what is a path, and how a cache is found."""

import hashlib
import json
from pathlib import Path

import pytest

from cmm_cache.cache.locate import cache_path, dataset_caches, find_cache
from cmm_cache.datasets.names import dataset_key, is_user_data, user_data_name
from cmm_cache.errors import CmmError
from cmm_cache.util.paths import cache_dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("CMM_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "cmm-cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cmm-cache"


def test_cache_path_layout():
    p = cache_path("dtd", "rn50")
    assert p.parts[-2:] == ("dtd", "rn50.h5")
    assert cache_path("dtd", "ViT-B-32/laion2b_s34b_b79k").name == "ViT-B-32_laion2b_s34b_b79k.h5"


def test_user_folders_get_short_distinct_keys(tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    ka, kb = dataset_key(str(a)), dataset_key(str(b))
    assert ka != kb and ka.startswith("images-") and len(ka) == len("images-") + 8
    monkeypatch.chdir(tmp_path / "..")
    rel = Path(tmp_path.name) / "a" / "images"
    assert dataset_key(str(rel)) == ka  # relative and absolute name one cache
    assert dataset_key("mydata.csv").startswith("mydata-")
    assert dataset_key("imagenet_sketch") == "imagenet_sketch"


def test_aliases_share_one_cache():
    """`extract --dataset imagenet-sketch` and `eval --shift imagenet_sketch` must meet."""
    assert cache_path("imagenet-sketch", "rn50") == cache_path("imagenet_sketch", "rn50")
    assert cache_path("DTD", "rn50") == cache_path("dtd", "rn50")
    assert dataset_key("not-registered") == "not-registered"


def test_dataset_files_are_paths_with_a_keyed_folder(tmp_path, monkeypatch):
    """`--dataset data.tsv` (or .csv / .txt / .json) is your own file, even before it exists: its cache
    folder carries the path hash, and it loads as a path."""
    monkeypatch.chdir(tmp_path)
    for name in ("data.tsv", "data.csv", "data.txt", "mine.json"):
        assert is_user_data(name)
        key = dataset_key(name)
        stem = name.split(".")[0]
        digest = hashlib.sha256(str(tmp_path / name).encode()).hexdigest()[:8]
        assert key == f"{stem}-{digest}"
    assert not is_user_data("dtd") and not is_user_data("tiny")


def test_user_data_name_is_the_name_everywhere(tmp_path):
    """Folder name, list-file stem, or the manifest's own `name`; the cache folder starts with it."""
    (tmp_path / "my.photos").mkdir()
    assert user_data_name(tmp_path / "my.photos") == "my.photos"
    assert dataset_key(str(tmp_path / "my.photos")).startswith("my.photos-")
    assert user_data_name(tmp_path / "pets.csv") == "pets"
    (tmp_path / "v2.json").write_text(json.dumps({"name": "mytex"}))
    assert user_data_name(tmp_path / "v2.json") == "mytex"
    assert dataset_key(str(tmp_path / "v2.json")).startswith("mytex-")
    (tmp_path / "broken.json").write_text("{not json")
    assert user_data_name(tmp_path / "broken.json") == "broken"


def _h5(path: Path, dataset: str) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["dataset"] = dataset
    return path


def test_find_cache_registered_and_path(tmp_path):
    root = tmp_path / "c"
    dtd = _h5(root / "dtd" / "rn50.h5", "dtd")
    assert find_cache("DTD", "rn50", root) == dtd == cache_path("dtd", "rn50", root)
    with pytest.raises(CmmError) as e:
        find_cache("dtd", "rn101", root)
    assert "rn101" in e.value.message and "cmm-cache extract --dataset dtd --backbone rn101" in e.value.hint
    assert "dtd/rn50.h5" in e.value.hint  # what does exist for that dataset
    data = tmp_path / "photos" / "dtd10"
    data.mkdir(parents=True)
    mine = _h5(cache_path(str(data), "tiny", root), str(data))
    assert mine.parent.name.startswith("dtd10-") and find_cache(str(data), "tiny", root) == mine


def test_find_cache_by_short_name(tmp_path, monkeypatch):
    """`fit --dataset dtd10` after `extract --dataset path/to/dtd10`: the one dtd10-* cache of that backbone."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "c"
    a, b = tmp_path / "a" / "dtd10", tmp_path / "b" / "dtd10"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with pytest.raises(CmmError) as e:  # nothing extracted yet: what to run
        find_cache("dtd10", "tiny", root)
    assert "not a registered dataset" in e.value.message and "--dataset PATH/TO/dtd10 --backbone tiny" in e.value.hint
    fa = _h5(cache_path(str(a), "tiny", root), "a/dtd10")
    _h5(cache_path(str(b), "rn50", root), "b/dtd10")
    _h5(root / "dtd100-0123abcd" / "tiny.h5", "dtd100")  # another name sharing the prefix is no candidate
    assert find_cache("dtd10", "tiny", root) == fa
    assert dataset_caches("dtd10", root) == sorted([fa, cache_path(str(b), "rn50", root)])
    assert dataset_caches(str(b), root) == dataset_caches("dtd10", root)
    fb = _h5(cache_path(str(b), "tiny", root), "b/dtd10")
    with pytest.raises(CmmError) as e:
        find_cache("dtd10", "tiny", root)
    text = str(e.value)
    assert "2 caches" in text and fa.parent.name in text and fb.parent.name in text
    assert "--dataset a/dtd10" in text and "--dataset b/dtd10" in text and "--cache FILE" in text
    with pytest.raises(CmmError) as e:
        find_cache("dtd10", "vit-b-16", root)
    assert "cmm-cache extract --dataset PATH/TO/dtd10 --backbone vit-b-16" in e.value.hint
    assert fa.parent.name in e.value.hint  # the caches that do exist under that name
