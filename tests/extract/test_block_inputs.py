"""`extract --finetune-blocks`: the size is said before encoding starts, a disk without room is refused first,
and the estimate is what the file then holds."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cmm_cache.errors import CmmError
from cmm_cache.extract import pipeline
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import make_dataset  # noqa: E402

KW = dict(shots=[1, 2], seeds=[1], chunk_rows=4, batch_size=4, num_workers=0, record_last=False)


def test_the_size_is_said_before_encoding_and_is_what_the_file_holds(tmp_path):
    events = []
    out = tmp_path / "c.h5"
    r = extract(make_dataset(tmp_path / "imgs"), "tiny", out=out, finetune_blocks=2, on_note=lambda m: events.append(m),
                on_chunk=lambda e: events.append("chunk"), **KW)  # fmt: skip
    assert events[0].startswith("--finetune-blocks 2: the block inputs") and events[1] == "chunk"
    assert events[0] in r.notes
    with h5py.File(out, "r") as f:
        stored = sum(f[f"splits/{s}/block_inputs"].size * 2 for s in ("train", "val", "test"))
        rows = sum(f[f"splits/{s}/block_inputs"].shape[0] * f[f"splits/{s}/block_inputs"].shape[1] for s in f["splits"])
    assert f"{rows} rows of [17×64] float16" in events[0]
    plans, _ = pipeline.plan_splits(make_dataset(tmp_path / "imgs"), [1, 2], [1], 4, 2, True)
    assert pipeline.block_input_bytes(plans, (17, 64)) == stored == rows * 17 * 64 * 2
    assert np.isfinite(stored)


def test_a_disk_without_room_is_refused_before_any_image_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_free_bytes", lambda path: 1000)
    chunks = []
    with pytest.raises(CmmError, match="free beside"):
        extract(make_dataset(tmp_path / "imgs"), "tiny", out=tmp_path / "c.h5", finetune_blocks=1,
                on_chunk=chunks.append, **KW)  # fmt: skip
    assert chunks == [] and not (tmp_path / "c.h5").exists()
    # without block inputs nothing is estimated or refused
    extract(make_dataset(tmp_path / "imgs"), "tiny", out=tmp_path / "c.h5", **KW)


def test_cache_verify_checks_the_block_nodes(tmp_path):
    from support.text_cache import make_text_cache

    from cmm_cache.cache.verify import verify_cache

    path = make_text_cache(tmp_path / "c.h5", blocks=True)
    assert verify_cache(path) == []
    with h5py.File(path, "r+") as f:
        d = f["splits/test/block_inputs"]
        data = d[:-1]
        del f["splits/test/block_inputs"]
        f.create_dataset("splits/test/block_inputs", data=data, fletcher32=True).attrs["views"] = '["center"]'
        f["splits/val/block_inputs"].attrs["views"] = '["center", "hflip"]'
    problems = verify_cache(path)
    assert any("splits/test/block_inputs: 119 rows for 120" in p for p in problems)
    assert any("splits/val/block_inputs: 1 views" in p for p in problems)
    with h5py.File(path, "r+") as f:
        del f["blocks"].attrs["cut"]
    assert any("attribute cut missing" in p for p in verify_cache(path))


def test_re_extracting_with_block_inputs_keeps_the_runs_on_features(tmp_path):
    """Block inputs leave the features as they were, so a run on features fitted before a re-extraction with
    them still matches the cache (found again, not fitted twice); a run on block inputs depends on the cut."""
    from cmm_cache.cache.reader import open_cache
    from cmm_cache.cache.schema import content_sha256
    from cmm_cache.runs.protocol import fit_protocol

    images = make_dataset(tmp_path / "imgs")
    hashes = {}
    for k in (0, 1, 2):
        out = tmp_path / f"k{k}.h5"
        extract(images, "tiny", out=out, finetune_blocks=k, **KW)
        c = open_cache(out)
        hashes[k] = (c.content_sha256_for("features"), c.content_sha256_for("block_inputs"))
        if k:
            assert c.provenance["features_request_sha256"] != c.provenance["request_sha256"]
            assert np.array_equal(c.split("test").features, open_cache(tmp_path / "k0.h5").split("test").features)
    assert hashes[0][0] == hashes[0][1] == content_sha256(open_cache(tmp_path / "k0.h5").provenance)
    assert hashes[0][0] == hashes[1][0] == hashes[2][0]  # what a method on features reads: unchanged
    assert len({hashes[0][1], hashes[1][1], hashes[2][1]}) == 3  # what partial finetuning reads: the cut

    runs = tmp_path / "runs"
    first = list(fit_protocol(open_cache(tmp_path / "k0.h5"), [1], [1], method="zero-shot", runs_root=runs))
    again = list(fit_protocol(open_cache(tmp_path / "k1.h5"), [1], [1], method="zero-shot", runs_root=runs))
    assert again[0]["skipped"] and again[0]["run_id"] == first[0]["run_id"]
