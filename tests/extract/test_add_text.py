"""`extract --add-text`: per-template text embeddings added to a cache written without them."""

import json
import re
import shlex
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cmm_cache.cli.main import main

from cmm_cache.backbones.load import load_backbone
from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.errors import CmmError
from cmm_cache.extract import add_text as at
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import make_dataset  # noqa: E402

KW = dict(shots=[1], seeds=[1], chunk_rows=8, batch_size=8, num_workers=0, record_last=False)
EXTRACT = ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1", "--seeds", "1"]


def _strip_per_template(path) -> dict:
    """Make `path` look like a cache of an older cmm-cache: no per_template nodes (returned for comparison)."""
    out = {}
    with h5py.File(path, "r+") as f:
        for s in list(f["text"]):
            out[s] = f[f"text/{s}/per_template"][...]
            del f[f"text/{s}/per_template"]
    return out


def _nodes(path) -> dict:
    """Every dataset's values and attributes, and the root attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = dict(f.attrs)
        f.visititems(lambda n, o: out.__setitem__(n, (o[...], dict(o.attrs))) if isinstance(o, h5py.Dataset) else None)
    return out


def test_cli_add_text_to_a_cache_without_it():
    r = CliRunner().invoke(main, [*EXTRACT, "--json"])
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["path"])
    want = _strip_per_template(path)
    before = _nodes(path)
    assert not open_cache(path).has_per_template() and verify_cache(path) == []

    # an up-to-date cache without the node says how to add it
    r = CliRunner().invoke(main, [*EXTRACT, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "up-to-date"
    assert "--add-text" in " ".join(json.loads(r.stdout)["notes"])

    # ... and that command does it
    note = " ".join(json.loads(r.stdout)["notes"])
    cmd = shlex.split(re.search(r"`(cmm-cache extract [^`]*--add-text)`", note).group(1))
    r = CliRunner().invoke(main, [*cmd[1:], "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "text-added"
    c = open_cache(path)
    assert verify_cache(path) == []
    for s in c.text_sets:
        np.testing.assert_allclose(c.text_per_template(s), want[s], rtol=1e-6, atol=1e-6)
    after = _nodes(path)
    assert after["/"] == before["/"]  # provenance (hence runs' cache_provenance_sha256) untouched
    for node, (values, attrs) in ((k, v) for k, v in before.items() if k != "/"):
        assert np.array_equal(after[node][0], values) and after[node][1] == attrs, node  # image features & co.
    added = set(after) - set(before)
    assert added == {f"text/{s}/per_template" for s in c.text_sets}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp or lock file left

    r = CliRunner().invoke(main, [*EXTRACT, "--add-text", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "up-to-date"
    r = CliRunner().invoke(main, [*EXTRACT, "--add-text", "--force"])
    assert r.exit_code == 2 and "choose one" in " ".join(r.output.split())


def test_add_text_without_a_cache_says_how_to_make_one():
    r = CliRunner().invoke(main, [*EXTRACT, "--add-text"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "No cache of dataset 'tiny'" in out and "cmm-cache extract --dataset tiny" in out
    r = CliRunner().invoke(main, [*EXTRACT, "--out", "nowhere.h5", "--add-text"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "No cache at nowhere.h5" in out and "--out nowhere.h5" in out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two local weights files for the tiny architecture (the extraction's, and other weights)."""
    d = tmp_path_factory.mktemp("w")
    sd = load_backbone("tiny").model.state_dict()
    torch.save({k: v + 0.01 for k, v in sd.items()}, d / "mine.pt")
    torch.save({k: v - 0.02 for k, v in sd.items()}, d / "other.pt")
    return d / "mine.pt", d / "other.pt"


def test_add_text_loads_only_the_text_tower_of_the_same_weights(weights, tmp_path, monkeypatch):
    mine, other = weights
    out = tmp_path / "c.h5"
    extract(make_dataset(tmp_path / "imgs"), "tiny", pretrained=mine, out=out, **KW)
    want = _strip_per_template(out)
    built = []
    orig = at.load_text_tower

    def spy(spec, w, device):
        tower = orig(spec, w, device)
        built.append(tower)
        return tower

    monkeypatch.setattr(at, "load_text_tower", spy)
    monkeypatch.setattr(
        "cmm_cache.backbones.load.load_backbone", lambda *a, **k: pytest.fail("the full backbone was built")
    )
    r = at.add_text("x", "tiny", pretrained=mine, out=out, device="cpu")
    assert r.status == "text-added"
    assert isinstance(built[0].model.visual, torch.nn.Identity)  # no image tower in memory
    c = open_cache(out)
    for s in c.text_sets:
        np.testing.assert_allclose(c.text_per_template(s), want[s], rtol=1e-5, atol=1e-6)
    assert verify_cache(out) == []


def test_add_text_refuses_another_backbone_identity(weights, tmp_path):
    mine, other = weights
    out = tmp_path / "c.h5"
    extract(make_dataset(tmp_path / "imgs"), "tiny", pretrained=mine, out=out, **KW)
    _strip_per_template(out)
    size = out.stat().st_size
    with pytest.raises(CmmError, match="not with .*other.pt"):  # other weights of the same architecture
        at.add_text("x", "tiny", pretrained=other, out=out, device="cpu")
    with pytest.raises(CmmError, match="not with random weights"):
        at.add_text("x", "tiny", out=out, device="cpu")
    with pytest.raises(CmmError, match="not RN50-quickgelu"):
        at.add_text("x", "rn50-arch", out=out, device="cpu")
    assert out.stat().st_size == size and not open_cache(out).has_per_template()


def test_add_text_refuses_text_features_it_cannot_reproduce(tmp_path):
    """Same backbone identity on paper, but the cached class features came from something else: refused."""
    out = tmp_path / "c.h5"
    extract(make_dataset(tmp_path / "imgs"), "tiny", out=out, **KW)
    _strip_per_template(out)
    with h5py.File(out, "r+") as f:
        f["text/simple/features"][...] = f["text/simple/features"][...][::-1]  # classes swapped
    with pytest.raises(CmmError, match="do not match the cache's"):
        at.add_text("x", "tiny", out=out, device="cpu")
    assert not open_cache(out).has_per_template()


def test_the_readers_hint_for_a_missing_node_works(tmp_path):
    """A cache anywhere (`fit --cache PATH`) without the node: the reader's message names a command that adds it."""
    out = tmp_path / "elsewhere" / "mine.h5"
    r = CliRunner().invoke(main, [*EXTRACT, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    _strip_per_template(out)
    with pytest.raises(CmmError) as e:
        open_cache(out).text_per_template()
    cmd = shlex.split(re.search(r"`(cmm-cache extract [^`]*--add-text)`", e.value.hint).group(1))
    r = CliRunner().invoke(main, cmd[1:])
    assert r.exit_code == 0, r.output
    assert open_cache(out).has_per_template() and verify_cache(out) == []
