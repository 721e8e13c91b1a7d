"""torchrun: 2 CPU processes (gloo) each encode a disjoint shard; rank 0 merges into the one cache."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from cmm_cache.cache.partial import partial_dir
from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import make_dataset  # noqa: E402

KW = dict(shots=[1, 2], seeds=[1, 2], chunk_rows=4, batch_size=4, num_workers=0)


def test_two_process_torchrun_equals_one_process(tmp_path):
    root = tmp_path / "imgs"
    ds = make_dataset(root)
    one = tmp_path / "one.h5"
    extract(ds, "tiny", out=one, record_last=False, **KW)

    two = tmp_path / "two.h5"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from support.extract import make_dataset
        from cmm_cache.extract.pipeline import extract
        r = extract(make_dataset({str(root)!r}), "tiny", out={str(two)!r}, record_last=False, **{KW!r})
        out = os.path.join({str(tmp_path)!r}, "rank%s.json" % os.environ["RANK"])
        with open(out, "w") as fh:
            json.dump({{"rank": r.rank, "world": r.world_size, "encoded": r.images_encoded}}, fh)
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results)
    total = sum(len(x) for x in (open_cache(one).split(s).index for s in ("train", "val", "test")))
    assert sum(r["encoded"] for r in results) == total and all(r["encoded"] > 0 for r in results)  # disjoint shards

    assert two.exists() and not partial_dir(two).exists() and verify_cache(two) == []
    a, b = open_cache(one), open_cache(two)
    assert a.provenance["world_size"] == 1 and b.provenance["world_size"] == 2
    for s in ("train", "val", "test"):
        sa, sb = a.split(s), b.split(s)
        np.testing.assert_allclose(sa.features.astype(np.float32), sb.features.astype(np.float32), rtol=1e-3, atol=1e-3)
        assert np.array_equal(sa.labels, sb.labels) and np.array_equal(sa.index, sb.index)
    assert a.fewshot_groups == b.fewshot_groups
    for g in a.fewshot_groups:
        assert all(np.array_equal(x, y) for x, y in zip(a.fewshot(*g), b.fewshot(*g)))
    for t in a.text_sets:
        np.testing.assert_allclose(a.text(t), b.text(t), rtol=1e-5, atol=1e-6)
