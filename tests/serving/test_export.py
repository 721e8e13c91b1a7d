"""`export`: one file that a Python with only torch loads, giving the probabilities `predict` gives."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.tiny_run import cli, cli_json, tiny_run

from cmm_cache.cache.reader import open_cache
from cmm_cache.serving.export import load_meta
from cmm_cache.serving.predict import load_classifier

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, not the repository on sys.path).
LOADER = """
import json, sys, torch
out = {}
for name in ("full", "head"):
    model = torch.export.load(sys.argv[1] + f"/{name}.pt2").module()
    x = torch.load(sys.argv[1] + f"/{name}_in.pt")
    out[name] = model(x).tolist()
    out[name + "_one"] = model(x[:1]).tolist()  # the batch size is not fixed by the export
assert "cmm_cache" not in sys.modules and "open_clip" not in sys.modules, "needs more than torch"
json.dump(out, open(sys.argv[1] + "/out.json", "w"))
"""


@pytest.mark.slow
def test_exported_files_run_with_plain_torch_and_match_predict(tmp_path_factory, tmp_path):
    from PIL import Image

    t = tiny_run(tmp_path_factory)
    full = cli_json(["export", "--run", t.run, "--out", tmp_path / "full.pt2"])
    head = cli_json(["export", "--run", t.run, "--out", tmp_path / "head.pt2", "--head-only"])
    assert full["input"].startswith("preprocessed images") and head["input"].startswith("raw image features")
    clf = load_classifier(t.run, "cpu")
    paths = t.test_paths[:7]
    expected = clf.predict(paths)  # what `predict` gives for these files
    torch.save(torch.stack([clf.transform(Image.open(p).convert("RGB")) for p in paths]), tmp_path / "full_in.pt")
    te = open_cache(t.cache).split("test")
    feats = torch.from_numpy(te.features[:7, 0].astype(np.float32))
    torch.save(feats, tmp_path / "head_in.pt")
    (tmp_path / "load.py").write_text(LOADER)
    r = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "load.py"), str(tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "out.json").read_text())
    torch.testing.assert_close(torch.tensor(got["full"]), expected, rtol=0, atol=1e-5)
    assert torch.equal(torch.tensor(got["full"]).argmax(1), expected.argmax(1))
    torch.testing.assert_close(torch.tensor(got["full_one"]), expected[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["head"]), clf.predict_features(feats), rtol=0, atol=1e-5)
    meta = load_meta(tmp_path / "full.pt2")
    assert meta["classes"] == clf.classes and meta["image_size"] == [32, 32] and "mean" in meta["preprocessing"]


def test_export_of_another_method_and_of_a_missing_run(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    zs = cli_json(
        ["fit", "--cache", t.cache, "--method", "zero-shot", "--shots", "1", "--seed", "1", "--runs-dir", tmp_path]
    )
    cli(["export", "--run", zs["run"], "--out", tmp_path / "zs.pt2", "--head-only"])
    model = torch.export.load(tmp_path / "zs.pt2").module()
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    # the exported graph and the eager head round differently (softmax of 100·cos): float32 tolerance
    torch.testing.assert_close(model(x), load_classifier(zs["run"], "cpu").predict_features(x), rtol=0, atol=1e-5)
    r = cli(["export", "--run", tmp_path / "nothing", "--out", tmp_path / "x.pt2"], ok=False)
    assert r.exit_code == 2 and "No run" in r.output and not (tmp_path / "x.pt2").exists()
