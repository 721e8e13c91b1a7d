"""Where caches and runs live (DESIGN.md "Commands": --cache-dir, env, XDG, home)."""

from pathlib import Path

from cmm_cache import paths


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert paths.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("CMM_CACHE_DIR")
    assert paths.cache_dir() == tmp_path / "xdg" / "cmm-cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "cmm-cache"


def test_cache_path_layout():
    p = paths.cache_path("dtd", "rn50")
    assert p.parts[-2:] == ("dtd", "rn50.h5")
    assert paths.cache_path("dtd", "ViT-B-32/laion2b_s34b_b79k").name == "ViT-B-32_laion2b_s34b_b79k.h5"


def test_user_folders_get_short_distinct_keys(tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    ka, kb = paths.dataset_key(str(a)), paths.dataset_key(str(b))
    assert ka != kb and ka.startswith("images-") and len(ka) == len("images-") + 8
    monkeypatch.chdir(tmp_path / "..")
    rel = Path(tmp_path.name) / "a" / "images"
    assert paths.dataset_key(str(rel)) == ka  # relative and absolute name one cache
    assert paths.dataset_key("mydata.csv").startswith("mydata-")
    assert paths.dataset_key("imagenet_sketch") == "imagenet_sketch"


def test_aliases_share_one_cache():
    """`extract --dataset imagenet-sketch` and `eval --shift imagenet_sketch` must meet."""
    assert paths.cache_path("imagenet-sketch", "rn50") == paths.cache_path("imagenet_sketch", "rn50")
    assert paths.cache_path("DTD", "rn50") == paths.cache_path("dtd", "rn50")
    assert paths.dataset_key("not-registered") == "not-registered"
