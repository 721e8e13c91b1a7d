"""`predict` and `load_classifier`: the predictions `eval` scores from the cache, from image files."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.tiny_run import cli, cli_json, tiny_run, write_folder_dataset

import cmm_cache
from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import split_features
from cmm_cache.heads.run_folder import load_run
from cmm_cache.serving.predict import collect_images, load_classifier


def _cache_predictions(run_dir, cache_path):
    """(predicted class per test row, labels, image row index) as `eval` computes them from the cache."""
    run, cache = load_run(run_dir), open_cache(cache_path)
    te = cache.split("test")
    x, y = split_features(te)
    return run.head.logits(x).argmax(1).numpy(), y.numpy(), te.index


def _check_consistent(run_dir, cache_path, test_paths, predictions, cache_dir):
    """predict's classes on the test images == the head on the cached features; accuracy == eval's."""
    by_path = {p["path"]: p["index"] for p in predictions}
    pred, labels, index = _cache_predictions(run_dir, cache_path)
    assert len(set(pred.tolist())) > 1  # not a run that says one class for everything: the match means something
    from_images = np.array([by_path[test_paths[int(i)]] for i in index])
    assert np.array_equal(from_images, pred)
    ev = cli_json(["eval", "--run", run_dir, "--cache-dir", cache_dir])
    assert 100.0 * float(np.mean(from_images == labels)) == pytest.approx(ev["test_acc"], abs=1e-9)


def test_predict_on_the_tiny_pipeline_matches_eval(tmp_path_factory):
    t = tiny_run(tmp_path_factory)
    out = cli_json(["predict", "--run", t.run, t.data, "--top-k", "2"])
    all_images = collect_images([t.data])
    assert [p["path"] for p in out["predictions"]] == all_images and len(all_images) == 130
    assert out["classes"] == open_cache(t.cache).classnames and out["skipped"] == []
    p0 = out["predictions"][0]
    assert len(p0["top"]) == 2 and p0["top"][0]["prob"] >= p0["top"][1]["prob"] and p0["class"] == p0["top"][0]["class"]
    _check_consistent(t.run, t.cache, t.test_paths, out["predictions"], t.cache_dir)


def test_predict_on_a_folder_dataset_matches_eval(tmp_path):
    from cmm_cache.datasets.registry import load_dataset

    data = write_folder_dataset(tmp_path / "colours")
    cd = tmp_path / "cache"
    cli(["extract", "--dataset", data, "--backbone", "tiny", "--cache-dir", cd])
    # your data goes by one name: the folder's, in results and for --dataset later
    fit = ["fit", "--cache-dir", cd, "--dataset", "colours", "--backbone", "tiny", "--shots", "2", "--seed", "1"]
    fitted = cli_json([*fit, "--iterations", "200"])
    assert fitted["dataset"] == "colours" and "/colours-" in fitted["run"]
    assert cli_json(["eval", "--cache-dir", cd, "--dataset", "colours"])["run"] == fitted["run"]
    out = cli_json(["predict", "--run", fitted["run"], data, "--workers", "0"])
    assert len(out["predictions"]) == 30
    test_paths = load_dataset(str(data)).splits["test"].paths
    _check_consistent(fitted["run"], fitted["cache"], test_paths, out["predictions"], cd)


def test_every_run_kind_predicts_what_it_scores(tmp_path_factory, tmp_path):
    """Ablations and another method: the probabilities from image files equal the head's on the cached features."""
    t = tiny_run(tmp_path_factory)
    cache = open_cache(t.cache)
    te = cache.split("test")
    feats = te.features[:, 0].astype(np.float32)
    paths = [t.test_paths[int(i)] for i in te.index]
    for flags in (["--no-map"], ["--cmm-only"], ["--fusion", "logit", "--alpha", "0.5"], ["--method", "zero-shot"]):
        it = [] if "--method" in flags else ["--iterations", "100"]
        r = cli_json(["fit", "--cache", t.cache, "--shots", "1", "--seed", "2", "--runs-dir", tmp_path, *it, *flags])
        clf = load_classifier(r["run"], "cpu")
        got = clf.predict_files(paths, num_workers=0)
        torch.testing.assert_close(got.probs, clf.predict_features(feats), rtol=0, atol=1e-6)
        acc = 100.0 * float((got.probs.argmax(1).numpy() == te.labels).mean())
        assert acc == pytest.approx(r["test_acc"], abs=1e-9), flags


def test_load_classifier_takes_paths_pil_images_tensors_or_features(tmp_path_factory):
    from PIL import Image

    t = tiny_run(tmp_path_factory)
    clf = cmm_cache.load_classifier(t.run, device="cpu")
    assert clf.classes == open_cache(t.cache).classnames
    paths = t.test_paths[:5]
    p = clf.predict(paths)
    assert p.shape == (5, len(clf.classes))
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    images = [Image.open(q) for q in paths]
    torch.testing.assert_close(clf.predict(images), p, rtol=0, atol=1e-6)
    batch = torch.stack([clf.transform(im.convert("RGB")) for im in images])
    torch.testing.assert_close(clf.predict(batch), p, rtol=0, atol=1e-6)
    torch.testing.assert_close(clf.predict(batch[0]), p[:1], rtol=0, atol=1e-6)
    te = open_cache(t.cache).split("test")
    rows = [list(te.index).index(t.test_paths.index(q)) for q in paths]
    torch.testing.assert_close(clf.predict(te.features[rows, 0].astype(np.float32)), p, rtol=0, atol=1e-6)
    with pytest.raises(CmmError, match="shape"):
        clf.predict(np.zeros((2, 3)))


def test_import_stays_light_until_a_classifier_is_asked_for():
    code = "import sys, cmm_cache; assert 'torch' not in sys.modules; cmm_cache.load_classifier; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_bad_images_are_reported_per_file_and_skipped_on_request(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    shutil.copy(t.test_paths[0], d / "a.png")
    shutil.copy(t.test_paths[1], d / "sub" / "b.png")
    (d / "broken.png").write_bytes(b"not an image at all")
    (d / "notes.txt.bak").write_text("not an image by its name: not listed")
    r = cli(["predict", "--run", t.run, d, "--workers", "0"], ok=False)
    assert r.exit_code == 2 and "broken.png" in r.output and "--skip-bad" in r.output
    out = cli_json(["predict", "--run", t.run, d, "--skip-bad", "--workers", "0", "--csv", tmp_path / "p.csv"])
    assert [p["path"] for p in out["predictions"]] == [str(d / "a.png"), str(d / "sub" / "b.png")]
    assert [s["path"] for s in out["skipped"]] == [str(d / "broken.png")]
    rows = (tmp_path / "p.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("path,class,prob,class1,prob1")
    r = cli(["predict", "--run", t.run, tmp_path / "missing.png"], ok=False)
    assert r.exit_code == 2 and "not found" in r.output
    # Nothing readable at all: an error even with --skip-bad (an empty table would look like success).
    r = cli(["predict", "--run", t.run, d / "broken.png", "--skip-bad", "--workers", "0"], ok=False)
    assert r.exit_code == 2 and "broken.png" in r.output and "None is left to classify" in r.output


def test_predict_reads_a_csv_of_paths(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    shutil.copy(t.test_paths[2], tmp_path / "x.png")
    (tmp_path / "list.csv").write_text(f"path,label\nx.png,0\n{t.test_paths[3]},1\n")
    out = cli_json(["predict", "--run", t.run, tmp_path / "list.csv", "--workers", "0"])
    assert [p["path"] for p in out["predictions"]] == [str(tmp_path / "x.png"), t.test_paths[3]]


def test_a_backbone_other_than_the_runs_is_refused(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(t.run, run)
    prov = json.loads((run / "provenance.json").read_text())
    prov["random_weights_seed"] = 7
    prov["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (run / "provenance.json").write_text(json.dumps(prov))
    r = cli(["predict", "--run", run, t.test_paths[0]], ok=False)
    text = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 2 and "not the one its features came from" in text
    assert "random_weights_seed" in text and "preprocessing" in text
    clf = load_classifier(run, "cpu")  # features need no backbone: still usable
    assert clf.predict_features(np.ones((1, clf.run.embed_dim))).shape == (1, 5)
