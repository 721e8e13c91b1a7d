"""`extract` on a small folder of your own: default shots are capped to what the data holds."""

import json

import numpy as np
from click.testing import CliRunner
from cmm_cache.cli.main import main
from PIL import Image

from cmm_cache.cache.reader import open_cache
from cmm_cache.datasets.registry import load_dataset


def _folder(root, classes=3, per_class=10):
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_default_shots_capped_for_small_user_folder(tmp_path):
    root = _folder(tmp_path / "mine")
    cap = load_dataset(str(root)).max_shots()
    assert 1 <= cap < 16
    r = CliRunner().invoke(
        main, ["extract", "--dataset", str(root), "--backbone", "tiny", "--device", "cpu", "--workers", "0", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["notes"] and "capped" in out["notes"][0]
    cache = open_cache(out["path"])
    assert sorted({k for k, _ in cache.fewshot_groups}) == [k for k in (1, 2, 4, 8, 16) if k <= cap]


def test_explicit_shots_beyond_the_data_still_fail_clearly(tmp_path):
    root = _folder(tmp_path / "mine")
    r = CliRunner().invoke(
        main,
        ["extract", "--dataset", str(root), "--backbone", "tiny", "--device", "cpu", "--workers", "0", "--shots", "16"],
    )
    assert r.exit_code == 2
    assert "16 are needed" in r.output
