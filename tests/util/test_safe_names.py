"""Names from data never become a step up, a hidden folder or a path separator in a folder name."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from cmm_cache.runs.store import run_dir
from cmm_cache.util.paths import safe_name


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ViT-B-32/openai", "ViT-B-32_openai"),
        ("..", "_."),
        (".", "_"),
        ("", "_"),
        ("../../etc", "_._.._etc"),
        (".hidden", "_hidden"),
        ("a\\b", "a_b"),
        ("rn50", "rn50"),
        ("x\x00y", "x_y"),
    ],
)
def test_safe_name(name, expected):
    s = safe_name(name)
    assert s == expected
    assert s not in ("", ".", "..") and "/" not in s and "\\" not in s and not s.startswith(".")


def test_a_long_name_is_cut_and_stays_distinct():
    a, b = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert len(a) <= 100 and len(b) <= 100 and a != b


@pytest.mark.parametrize("backbone", ["..", ".", "../..", "/abs/path", ""])
def test_a_run_of_a_cache_named_to_escape_stays_under_the_runs_root(tmp_path, backbone):
    cache = SimpleNamespace(path=tmp_path / "x.h5", dataset="synth", backbone=backbone, dataset_name="synth")
    root = tmp_path / "runs"
    d = run_dir(root, cache, "..", "0123abcd", 4, 1)
    assert d.resolve().is_relative_to(root.resolve()) and len(d.relative_to(root).parts) == 4
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in d.relative_to(root).parts)
    assert Path(d).name == "shot_4-seed_1"
