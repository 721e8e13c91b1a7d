"""One tiny pipeline (extract tiny with the tiny backbone, fit CMM 4-shot seed 1) shared by the
predict and export tests, built once per test session in its own cache dir."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from click.testing import CliRunner
from cmm_cache.cli.main import main

_built: dict = {}


def cli(args, ok=True):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def cli_json(args):
    return json.loads(cli([*args, "--json"]).stdout)


def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """cache_dir, run (folder), cache (file), data (the tiny image folder), test_paths, fitted (result)."""
    if "tiny" not in _built:
        from cmm_cache.datasets.registry import load_dataset

        cd = tmp_path_factory.mktemp("tiny-pipeline") / "cache"
        cli(["extract", "--dataset", "tiny", "--backbone", "tiny", "--cache-dir", cd])
        fitted = cli_json(
            ["fit", "--cache-dir", cd, "--dataset", "tiny", "--backbone", "tiny", "--shots", "4", "--seed", "1",
             "--iterations", "300", "--lr", "1e-3"]
        )  # fmt: skip
        ds = load_dataset("tiny", cache_root=cd)
        _built["tiny"] = SimpleNamespace(
            cache_dir=cd,
            run=Path(fitted["run"]),
            cache=Path(fitted["cache"]),
            data=Path(ds.root),
            test_paths=list(ds.splits["test"].paths),
            fitted=fitted,
        )
    return _built["tiny"]


def write_folder_dataset(root: Path, classes=("red", "green", "blue"), per_class=10, seed=0) -> Path:
    """root/<class>/NNN.png: an image folder of your own (class = colour that dominates)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 120, size=(40, 48, 3), dtype=np.uint8)
            arr[..., c] = rng.integers(150, 255, size=(40, 48), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root
