"""Stage one end to end with the tiny backbone on a small synthetic PNG dataset (CPU)."""
# ruff: noqa: F811  (the fixtures imported from support/extract.py are used as arguments)

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.figures import is_figure

from cmm_cache.backbones.load import load_backbone
from cmm_cache.cache.partial import partial_dir
from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.schema import SCHEMA
from cmm_cache.cache.verify import verify_cache
from cmm_cache.errors import CmmError
from cmm_cache.extract.encode import load_image
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import CLASSES, KW, SEEDS, SHOTS, TEMPLATES, ds, image_root, make_dataset, reference  # noqa: E402, F401


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


def test_file_follows_the_schema_node_by_node(reference, ds):
    r, path = reference
    assert r.status == "written" and Path(r.path) == path and path.exists()
    with h5py.File(path, "r") as f:
        assert set(f.attrs) == {"schema", "dataset", "backbone", "provenance", "default_templates"}
        assert f.attrs["schema"] == SCHEMA and f.attrs["dataset"] == "tinyset" and f.attrs["backbone"] == "tiny"
        assert f.attrs["default_templates"] == "ensemble"
        prov = json.loads(f.attrs["provenance"])
        for key in (
            "model",
            "pretrained",
            "weights_sha256",
            "embed_dim",
            "preprocessing",
            "versions",
            "manifest_sha256",
            "created",
            "device",
            "skipped",
            "shots",
            "seeds",
        ):
            assert key in prov, key
        assert prov["model"] == "cmm-tiny" and prov["embed_dim"] == 32 and prov["manifest_sha256"] == ds.manifest_sha256
        assert set(prov["versions"]) >= {"open_clip", "torch", "cmm_cache"}
        assert prov["shots"] == SHOTS and prov["seeds"] == SEEDS and prov["skipped"] == []
        assert set(f) == {"classes", "text", "splits", "fewshot"}
        assert set(f["classes"]) == {"names"}  # no wnids/imagenet_index for an ordinary dataset
        assert [x.decode() for x in f["classes/names"][...]] == CLASSES
        assert set(f["text"]) == set(TEMPLATES)
        for name, tpl in TEMPLATES.items():
            d = f[f"text/{name}/features"]
            assert d.dtype == np.float32 and d.shape == (3, 32)
            assert json.loads(d.attrs["templates"]) == tpl
        assert set(f["splits"]) == {"train", "val", "test"}
        views = {"train": ["center", "hflip"], "val": ["center"], "test": ["center"]}
        for s, v in views.items():
            feats, labels, index = (f[f"splits/{s}/{k}"] for k in ("features", "labels", "index"))
            n = feats.shape[0]
            assert feats.dtype == np.float16 and feats.shape == (n, len(v), 32)
            assert json.loads(feats.attrs["views"]) == v
            assert labels.dtype == np.int64 and index.dtype == np.int64 and labels.shape == index.shape == (n,)
            assert np.array_equal(labels[...], ds.splits[s].labels[index[...]])
        assert np.array_equal(f["splits/test/index"][...], np.arange(len(ds.splits["test"].paths)))
        assert sorted(f["fewshot"]) == sorted(f"shot_{k}-seed_{s}" for k in SHOTS for s in SEEDS)
        for g in f["fewshot"].values():
            assert set(g) == {"train", "val"} and g["train"].dtype == np.int64
        checksummed = []
        f.visititems(lambda n, o: checksummed.append(o.fletcher32) if isinstance(o, h5py.Dataset) else None)
        assert checksummed and all(checksummed)
    assert verify_cache(path) == []
    c = open_cache(path)
    assert c.num_classes == 3 and c.embed_dim == 32 and c.fewshot_groups == [(k, s) for k in SHOTS for s in SEEDS]
    # no work files left behind
    assert not partial_dir(path).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no lock file either


def test_train_union_and_fewshot_groups_point_at_the_right_images(reference, ds):
    _, path = reference
    c = open_cache(path)
    train, val = c.split("train"), c.split("val")
    want_train = np.unique(np.concatenate([ds.fewshot(k, s)[0] for k in SHOTS for s in SEEDS]))
    assert np.array_equal(train.index, want_train)
    for k in SHOTS:
        for s in SEEDS:
            tr, va = c.fewshot(k, s)
            want_tr, want_va = ds.fewshot(k, s)
            assert np.array_equal(train.index[tr], want_tr) and np.array_equal(val.index[va], want_va)
            assert np.array_equal(train.labels[tr], ds.splits["train"].labels[want_tr])
            assert np.bincount(train.labels[tr], minlength=3).tolist() == [k] * 3


def _encode(bb, img):
    with torch.no_grad():
        return bb.model.encode_image(bb.preprocess(img)[None]).float().numpy()[0]


def test_image_features_and_flip_view_equal_direct_encoding(reference, ds, tiny):
    _, path = reference
    c = open_cache(path)
    train, test = c.split("train"), c.split("test")
    for pos in (0, len(train.index) - 1):
        p = ds.splits["train"].paths[train.index[pos]]
        center, mirrored = _encode(tiny, load_image(p)), _encode(tiny, load_image(p, flip=True))
        np.testing.assert_allclose(train.features[pos, 0], center, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(train.features[pos, 1], mirrored, rtol=2e-3, atol=2e-3)
        assert not np.allclose(center, mirrored, atol=1e-2)  # the view really is a different image
    p = ds.splits["test"].paths[5]
    np.testing.assert_allclose(test.features[5, 0], _encode(tiny, load_image(p)), rtol=2e-3, atol=2e-3)


def test_text_features_are_the_normalized_template_mean(reference, tiny):
    _, path = reference
    c = open_cache(path)
    for name, tpl in TEMPLATES.items():
        want, raw = [], []
        for cls in CLASSES:
            with torch.no_grad():
                e = tiny.model.encode_text(tiny.tokenizer([t.format(cls) for t in tpl])).float()
            m = e.mean(0)
            want.append((m / m.norm()).numpy())
            raw.append(e.numpy())
        np.testing.assert_allclose(c.text(name), np.stack(want), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(c.text(name), axis=1), 1.0, atol=1e-5)
        # The optional per-template node holds each template's raw embedding, in template order.
        assert c.has_per_template(name)
        per = c.text_per_template(name)
        assert per.shape == (len(CLASSES), len(tpl), c.embed_dim)
        np.testing.assert_allclose(per, np.stack(raw), rtol=1e-5, atol=1e-5)


def test_corrupt_image_stops_the_run_naming_the_file(image_root, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(image_root, root)
    ds = make_dataset(root)
    bad = Path(ds.splits["test"].paths[7])
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    out = tmp_path / "c.h5"
    with pytest.raises(CmmError) as e:
        extract(ds, "tiny", out=out, **{**KW, "num_workers": 1})  # decoded in a worker process
    assert str(bad) in str(e.value) and "--skip-bad" in str(e.value)
    assert not out.exists()
    r = extract(ds, "tiny", out=out, skip_bad=True, **{**KW, "num_workers": 1})
    assert r.status == "written" and len(r.skipped) == 1
    c = open_cache(out)
    assert c.provenance["skipped"][0]["path"] == str(bad) and c.provenance["skipped"][0]["split"] == "test"
    test = c.split("test")
    assert len(test.index) == len(ds.splits["test"].paths) - 1 and 7 not in test.index
    assert verify_cache(out) == []


def test_shift_set_writes_test_and_imagenet_index(image_root, tmp_path):
    ds = make_dataset(image_root, shift=True)
    out = tmp_path / "shift.h5"
    extract(ds, "tiny", out=out, **KW)
    c = open_cache(out)
    assert c.split_names == ["test"] and c.fewshot_groups == []
    assert c.is_shift and c.imagenet_index.tolist() == [5, 17, 999] and c.wnids == ["n01", "n02", "n03"]
    assert verify_cache(out) == []


def test_cli_extract_json_on_the_tiny_dataset(tmp_path):
    r = CliRunner().invoke(
        main, ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1,2", "--seeds", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "written" and out["dataset"] == "tiny" and out["backbone"] == "tiny"
    path = Path(out["path"])
    assert path == Path(os.environ["CMM_CACHE_DIR"]) / "tiny" / "tiny.h5" and path.exists()
    assert verify_cache(path) == []
    from cmm_cache.cache.locate import last_extract

    assert last_extract()["path"] == str(path)
    r = CliRunner().invoke(
        main, ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1,2", "--seeds", "1"]
    )
    assert r.exit_code == 0 and "up to date" in r.output


def test_cli_bench_extract_reports_both_figures(image_root):
    """Smoke test of the benchmark command (figures are measured, never asserted)."""
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "extract",
            "--data",
            str(image_root / "test"),
            "--backbone",
            "tiny",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--repeat",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["images"] == 12 and out["batch_size"] == 4 and "cores, load average" in out["machine"]
    assert all(is_figure(out[k]) for k in ("end_to_end_images_per_s", "bare_forward_images_per_s", "ratio"))


def test_progress_log_lines_now_and_then():
    """Not on a terminal: a line at the start, one per interval, one at the end (a fake clock, no waiting)."""
    from cmm_cache.cli.progress import LogLines

    lines = []
    clock = iter([0.0, 1.0, 2.0, 12.5, 13.0, 20.0]).__next__
    log = LogLines("extract x", interval=10, clock=clock, emit=lines.append)
    for done in (4, 10, 20, 50, 60, 100):
        log(done, 100)
    assert lines == [
        "extract x: 4/100 images (4 already done by an earlier run)",
        "extract x: 50/100 images (50.0 %), 3.7 images/s, about 14s left",  # (50 - 4) / 12.5 s; 50 left
        "extract x: 100/100 images (100.0 %), 4.8 images/s",
    ]


def test_cli_extract_logs_progress_when_stderr_is_not_a_terminal():
    r = CliRunner().invoke(
        main, ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1", "--seeds", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # stdout holds the JSON object only
    n = out["images_encoded"]
    lines = [line for line in r.stderr.splitlines() if line.startswith("extract tiny × tiny: ") and " images" in line]
    assert n > 0 and lines[0] == f"extract tiny × tiny: 0/{n} images", r.stderr
    assert lines[-1].startswith(f"extract tiny × tiny: {n}/{n} images (100.0 %), "), r.stderr
