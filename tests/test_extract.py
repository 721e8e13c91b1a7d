"""Stage one end to end with the tiny backbone on a small synthetic PNG dataset (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cmm_cache.cli.main import main

from cmm_cache.backbones import load_backbone
from cmm_cache.cache import SCHEMA, CacheLock, open_cache, partial_dir, verify_cache
from cmm_cache.encode import load_image
from cmm_cache.errors import CmmError
from cmm_cache.extract import extract

sys.path.insert(0, str(Path(__file__).parent))
from extract_helpers import CLASSES, TEMPLATES, InjectedFailure, fail_after, make_dataset  # noqa: E402

SHOTS, SEEDS = [1, 2], [1, 2]
KW = dict(shots=SHOTS, seeds=SEEDS, chunk_rows=4, batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    make_dataset(root)
    return root


@pytest.fixture
def ds(image_root):
    return make_dataset(image_root)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def reference(image_root, tmp_path_factory):
    """One uninterrupted extraction, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = extract(make_dataset(image_root), "tiny", out=out, record_last=False, **KW)
    return r, out


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


def test_interrupted_run_resumes_and_ends_identical(reference, ds, tmp_path):
    _, ref = reference
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(3), **KW)
    assert not out.exists()  # never a lie at the final path
    assert len(list(partial_dir(out).glob("*.*.npz"))) == 3
    r = extract(ds, "tiny", out=out, **KW)
    assert r.status == "written" and r.images_resumed == 12 and r.images_encoded == sum(r.splits.values()) - 12
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        sa, sb = a.split(s), b.split(s)
        assert np.array_equal(sa.features, sb.features), s
        assert np.array_equal(sa.labels, sb.labels) and np.array_equal(sa.index, sb.index)
    for g in a.fewshot_groups:
        assert all(np.array_equal(x, y) for x, y in zip(a.fewshot(*g), b.fewshot(*g)))
    for t in a.text_sets:
        assert np.array_equal(a.text(t), b.text(t))
    assert not partial_dir(out).exists()
    # the same request again: nothing to do; a different one: refused without --force
    assert extract(ds, "tiny", out=out, **KW).status == "up-to-date"
    with pytest.raises(CmmError, match="--force"):
        extract(ds, "tiny", out=out, **{**KW, "shots": [1]})
    assert extract(ds, "tiny", out=out, force=True, **{**KW, "shots": [1]}).status == "written"
    assert open_cache(out).fewshot_groups == [(1, 1), (1, 2)]


def test_killed_process_resumes_and_ends_identical(reference, image_root, tmp_path):
    """A real SIGKILL (no cleanup code runs) after 2 chunks: nothing at the final path, the lock is free, resume."""
    _, ref = reference
    out = tmp_path / "k.h5"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from extract_helpers import fail_after, make_dataset\n"
        "from cmm_cache.extract import extract\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, on_chunk=fail_after(2, kill=True), "
        f"**{KW!r})\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    assert not out.exists() and len(list(partial_dir(out).glob("*.*.npz"))) == 2
    r = extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert r.images_resumed == 8
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s


def test_partial_run_of_a_different_request_is_refused(ds, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(1), **KW)
    with pytest.raises(CmmError, match="unfinished extraction for a different request"):
        extract(ds, "tiny", out=out, **{**KW, "seeds": [1]})
    assert extract(ds, "tiny", out=out, force=True, **{**KW, "seeds": [1]}).images_resumed == 0


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


def test_locked_cache_is_refused_at_once(ds, tmp_path):
    out = tmp_path / "c.h5"
    with CacheLock(out):
        with pytest.raises(CmmError, match="Another extraction is writing"):
            extract(ds, "tiny", out=out, **KW)
    assert not out.exists()
    # a writer that died holding the lock does not block: the kernel released its lock
    code = f"from cmm_cache.cache import CacheLock; import os; CacheLock({str(out)!r}).acquire(); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert extract(ds, "tiny", out=out, **KW).status == "written"


def test_lock_of_a_killed_extraction_is_free_at_once(image_root, tmp_path):
    """An extraction killed (SIGKILL) while its DataLoader workers run: the lock is free the moment it is dead.

    Forked workers share the lock's open file; unless they drop it, they keep a dead writer's lock
    until their watchdog notices the parent is gone (seconds later).
    """
    out = tmp_path / "k.h5"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from extract_helpers import fail_after, make_dataset\n"
        "from cmm_cache.extract import extract\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, on_chunk=fail_after(1, kill=True), "
        f"**{ {**KW, 'shots': [1], 'seeds': [1], 'num_workers': 2}!r})\n"
    )
    # No pipes: reading the child's output to the end would wait for its orphaned workers too.
    with open(tmp_path / "stderr.txt", "w") as err:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert p.returncode == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    CacheLock(out).acquire().release()  # no wait, no retry
    r = extract(make_dataset(image_root), "tiny", out=out, **{**KW, "shots": [1], "seeds": [1]})
    assert r.status == "written" and r.images_resumed == 3  # the one train chunk (1 image per class)


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
    from cmm_cache.paths import last_extract

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
    assert out["images"] == 12 and out["batch_size"] == 4
    assert out["end_to_end_images_per_s"] > 0 and out["bare_forward_images_per_s"] > 0 and out["ratio"] > 0


def test_run_killed_while_assembling_leaves_no_temp_file_once_resumed(reference, image_root, tmp_path):
    """Killed (SIGKILL) half-way through writing the HDF5 file: a `<final>.tmp-<pid>` stays behind; the resume
    finishes from the chunk files and removes it."""
    _, ref = reference
    out = tmp_path / "work" / "a.h5"
    code = (
        f"import os, signal, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from extract_helpers import make_dataset\n"
        "from cmm_cache.cache import writer\n"
        "from cmm_cache.extract import extract\n"
        "orig = writer._stream_split\n"
        "def stream_then_die(f, store, sp, *a):\n"
        "    orig(f, store, sp, *a)\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "writer._stream_split = stream_then_die\n"
        f"extract(make_dataset({str(image_root)!r}), 'tiny', out={str(out)!r}, **{KW!r})\n"
    )
    with open(tmp_path / "stderr.txt", "w") as err:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert p.returncode == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    stale = list(out.parent.glob("a.h5.tmp-*"))
    assert not out.exists() and len(stale) == 1 and stale[0].stat().st_size > 0
    r = extract(make_dataset(image_root), "tiny", out=out, **KW)
    assert r.status == "written" and r.images_encoded == 0 and r.images_resumed == sum(r.splits.values())
    assert [p.name for p in out.parent.iterdir()] == ["a.h5"]
    assert verify_cache(out) == []
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s


def test_damaged_cache_at_the_final_path_is_called_damaged(ds, tmp_path):
    out = tmp_path / "c.h5"
    extract(ds, "tiny", out=out, **KW)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])  # truncated, e.g. by a full disk during a copy
    with pytest.raises(CmmError) as e:
        extract(ds, "tiny", out=out, **KW)
    msg = str(e.value)
    assert "damaged" in msg and "different request" not in msg
    assert f"cmm-cache cache verify {out}" in msg and "--force" in msg
    r = extract(ds, "tiny", out=out, force=True, **KW)
    assert r.status == "written" and verify_cache(out) == []


def test_cache_not_written_by_extract_is_not_taken_for_another_request(ds, tmp_path):
    from cmm_cache.cache import Split, write_cache

    out = tmp_path / "c.h5"
    split = Split(np.zeros((1, 1, 4), np.float16), np.array([0]), np.array([0]), ["center"])
    text = {"t": (np.ones((1, 4), np.float32), ["{}"])}
    write_cache(
        out, dataset="x", backbone="tiny", provenance={}, classnames=["a"], text=text, default_templates="t",
        splits={"test": split},
    )  # fmt: skip
    with pytest.raises(CmmError, match="not written by `cmm-cache extract`"):
        extract(ds, "tiny", out=out, **KW)


def test_resume_keeps_the_chunk_size_it_started_with(reference, ds, tmp_path):
    """Resume at chunk granularity: a run started with 4-row chunks and repeated with another chunk size (a
    newer default) finishes with 4-row chunks, reusing what is on disk, and ends identical."""
    _, ref = reference
    out = tmp_path / "c.h5"
    with pytest.raises(InjectedFailure):
        extract(ds, "tiny", out=out, on_chunk=fail_after(2), **KW)
    r = extract(ds, "tiny", out=out, **{**KW, "chunk_rows": 64})
    assert r.images_resumed == 8
    a, b = open_cache(ref), open_cache(out)
    for s in ("train", "val", "test"):
        assert np.array_equal(a.split(s).features, b.split(s).features), s
    # the chunk size does not make another request: the cache is up to date for any chunk size
    assert extract(ds, "tiny", out=out, **{**KW, "chunk_rows": 7}).status == "up-to-date"


def test_cache_of_an_earlier_version_is_still_up_to_date(ds, tmp_path):
    """Earlier versions hashed the chunk size (always 1024 from the CLI) into the request fingerprint."""
    import hashlib

    from cmm_cache.extract_plan import plan_splits, request_fingerprint

    out = tmp_path / "c.h5"
    extract(ds, "tiny", out=out, **KW)
    bb = load_backbone("tiny")
    fp = request_fingerprint(ds, bb, *plan_splits(ds, SHOTS, SEEDS, 4))
    legacy = {k: v for k, v in fp.items() if k not in ("sha256", "legacy_sha256")}
    legacy["chunk_rows"] = 1024
    old_sha = hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str).encode()).hexdigest()
    with h5py.File(out, "r+") as f:  # as the earlier version wrote it
        prov = json.loads(f.attrs["provenance"])
        assert prov["request_sha256"] != old_sha
        f.attrs["provenance"] = json.dumps({**prov, "request_sha256": old_sha}, sort_keys=True)
    assert extract(ds, "tiny", out=out, **KW).status == "up-to-date"


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
    lines = [line for line in r.stderr.splitlines() if line.startswith("extract tiny × tiny: ")]
    assert n > 0 and lines[0] == f"extract tiny × tiny: 0/{n} images", r.stderr
    assert lines[-1].startswith(f"extract tiny × tiny: {n}/{n} images (100.0 %), "), r.stderr
