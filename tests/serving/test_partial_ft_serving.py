"""A partial-finetuning run on new images: `predict` runs the frozen tower up to the cut and then the fine-tuned
blocks, and gives what `eval` scores from the cached block inputs; `export` writes the same as one file."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.tiny_run import cli, cli_json, write_folder_dataset

from cmm_cache.backbones.cut import cut_tower
from cmm_cache.backbones.load import load_backbone
from cmm_cache.cache.reader import open_cache
from cmm_cache.datasets.registry import load_dataset
from cmm_cache.errors import CmmError
from cmm_cache.extract.encode import load_image
from cmm_cache.heads.run_folder import load_run
from cmm_cache.serving.export import load_meta
from cmm_cache.serving.predict import collect_images, load_classifier

FIT = [
    "--method",
    "cross-modal-partial-ft",
    "--set",
    "iterations=120",
    "--set",
    "lr=[0.001, 0.0001]",
    "--set",
    "batch_size=[4]",
]  # 3 classes, 1 template: a text half of 4 would not fit (their batch filter)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder dataset extracted with block inputs by the tiny ViT (K = 1) and the tiny ResNet (K = 2), a
    partial-finetuning run on each."""
    root = tmp_path_factory.mktemp("pft-serving")
    data = write_folder_dataset(root / "colours")
    out = {}
    for bb, k in (("tiny", 1), ("tiny-rn", 2)):
        cd = root / f"cache-{bb}"
        cli(["extract", "--dataset", data, "--backbone", bb, "--cache-dir", cd, "--finetune-blocks", k,
             "--workers", "0", "--shots", "2", "--seeds", "1"])  # fmt: skip
        fitted = cli_json(["fit", "--cache-dir", cd, "--dataset", "colours", "--backbone", bb, "--shots", "2",
                           "--seed", "1", *FIT])  # fmt: skip
        out[bb] = (cd, fitted, data)
    return out


@pytest.mark.parametrize("bb", ["tiny", "tiny-rn"])
def test_predict_equals_eval_on_the_same_images(runs, bb):
    cd, fitted, data = runs[bb]
    run, cache = load_run(fitted["run"]), open_cache(fitted["cache"])
    assert run.head.kind == "partial-ft" and run.head.input == "block_inputs"
    out = cli_json(["predict", "--run", fitted["run"], data, "--workers", "0"])
    by_path = {p["path"]: p["index"] for p in out["predictions"]}
    test_paths = load_dataset(str(data)).splits["test"].paths
    te = cache.split("test")
    x = torch.from_numpy(cache.block_inputs("test")[:, 0].astype(np.float32))
    from_cache = run.head.logits(x).argmax(1).numpy()
    from_images = np.array([by_path[test_paths[int(i)]] for i in te.index])
    assert np.array_equal(from_images, from_cache)
    ev = cli_json(["eval", "--run", fitted["run"], "--cache-dir", cd])
    assert ev["test_acc"] == pytest.approx(fitted["test_acc"])
    assert 100.0 * float(np.mean(from_images == te.labels)) == pytest.approx(ev["test_acc"], abs=1e-9)
    # probabilities too: the block inputs predict computes are the cached ones
    clf = load_classifier(fitted["run"], "cpu")
    paths = [test_paths[int(i)] for i in te.index]
    got = clf.predict_files(paths, num_workers=0)
    torch.testing.assert_close(got.probs, clf.predict_features(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bb", ["tiny", "tiny-rn"])
def test_new_images_go_through_the_frozen_prefix_then_the_finetuned_blocks(runs, bb, tmp_path):
    """Images the cache never saw: the prediction is the head on float16(prefix(image)), computed by hand."""
    _, fitted, _ = runs[bb]
    new = write_folder_dataset(tmp_path / "new", per_class=3, seed=11)
    paths = collect_images([new])
    clf = load_classifier(fitted["run"], "cpu")
    got = clf.predict(paths)
    backbone = load_backbone(bb)
    cut = cut_tower(backbone.model.visual, clf.head.cut["blocks"])
    with torch.no_grad():
        h = cut.prefix(torch.stack([backbone.preprocess(load_image(p)) for p in paths])).to(torch.float16)
        want = clf.head.probs(h.float())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the fine-tuned blocks matter: the extracted (not fine-tuned) blocks give other probabilities
    from cmm_cache.heads.tower import TowerSuffix

    start = TowerSuffix(cut.config, cut.suffix_state())
    with torch.no_grad():
        f = torch.nn.functional.normalize(start(h.float()), dim=1)
        untouched = torch.softmax(clf.head.logit_scale * f @ clf.head.weight.t(), 1)
    assert not torch.allclose(untouched, want, atol=1e-4)


LOADER = """
import json, sys, torch
out = {}
for name in ("full", "head"):
    model = torch.export.load(sys.argv[1] + f"/{name}.pt2").module()
    x = torch.load(sys.argv[1] + f"/{name}_in.pt")
    out[name] = model(x).tolist()
    out[name + "_one"] = model(x[:1]).tolist()
assert "cmm_cache" not in sys.modules and "open_clip" not in sys.modules, "needs more than torch"
json.dump(out, open(sys.argv[1] + "/out.json", "w"))
"""


@pytest.mark.parametrize("bb", ["tiny", "tiny-rn"])
def test_export_runs_the_frozen_prefix_and_the_finetuned_blocks_with_plain_torch(runs, bb, tmp_path):
    _, fitted, data = runs[bb]
    full = cli_json(["export", "--run", fitted["run"], "--out", tmp_path / "full.pt2"])
    head = cli_json(["export", "--run", fitted["run"], "--out", tmp_path / "head.pt2", "--head-only"])
    assert full["input"].startswith("preprocessed images") and head["input"].startswith("block inputs")
    clf = load_classifier(fitted["run"], "cpu")
    paths = collect_images([data])[:6]
    expected = clf.predict(paths)
    imgs = torch.stack([clf.transform(load_image(p)) for p in paths])
    torch.save(imgs, tmp_path / "full_in.pt")
    blocks = torch.from_numpy(clf.encode(imgs).astype(np.float32))
    torch.save(blocks, tmp_path / "head_in.pt")
    (tmp_path / "load.py").write_text(LOADER)
    r = subprocess.run([sys.executable, "-I", str(tmp_path / "load.py"), str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "out.json").read_text())
    torch.testing.assert_close(torch.tensor(got["full"]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["full_one"]), expected[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["head"]), expected, rtol=0, atol=1e-5)
    assert load_meta(tmp_path / "head.pt2")["input"].startswith("block inputs")


def test_a_backbone_with_another_frozen_part_is_refused(runs, tmp_path):
    import shutil

    _, fitted, data = runs["tiny"]
    run = tmp_path / "run"
    shutil.copytree(fitted["run"], run)
    res = json.loads((run / "result.json").read_text())
    res["head"]["params"]["cut"]["prefix_sha256"] = "0" * 64  # as if fitted on other weights below the cut
    (run / "result.json").write_text(json.dumps(res))
    clf = load_classifier(run, "cpu")
    with pytest.raises(CmmError, match="block inputs the run was fitted on"):
        clf.predict(collect_images([data])[:2])
    with pytest.raises(CmmError, match="block inputs"):
        clf.predict_features(np.zeros((2, 32), np.float32))  # features are not what this head takes


def test_eval_on_a_cache_without_block_inputs_says_how_to_get_them(runs, tmp_path):
    _, fitted, data = runs["tiny"]
    cd = tmp_path / "plain"
    cli(["extract", "--dataset", data, "--backbone", "tiny", "--cache-dir", cd, "--workers", "0", "--shots", "2",
         "--seeds", "1"])  # fmt: skip
    plain = open_cache(cli_json(["cache", "ls", "--cache-dir", cd])["caches"][0]["path"])
    r = cli(["eval", "--run", fitted["run"], "--cache", plain.path], ok=False)
    assert r.exit_code != 0 and "--finetune-blocks" in r.output
