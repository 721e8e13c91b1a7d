"""Damaged caches with valid checksums: every case gets one clear message, no traceback, no number.

Each case damages a sound synthetic cache in one way (every dataset rewritten keeps its fletcher32
checksum, so only the schema rules can catch it). For every case:

- ``open_cache`` refuses it with a message naming the problem (or, for damage in the image features that is
  only seen when they are read, the first read refuses it);
- ``cmm-cache cache verify`` reports the same problem (one set of rules, :mod:`cmm_cache.cache.validate`);
- ``fit``, ``compare`` and ``eval --cache`` end with exit status 2 and one ``error:`` line: no traceback,
  and no accuracy printed or written.
"""

import json

import h5py
import numpy as np
import pytest
from support.synth import make_cache
from support.tiny_run import cli

from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.errors import CmmError
from cmm_cache.runs.protocol import fit_run
from cmm_cache.runs.store import save_run

C, D = 4, 8


def _replace(f, key, data, **attrs):
    old = dict(f[key].attrs) if key in f else {}
    if key in f:
        del f[key]
    d = f.create_dataset(key, data=data, fletcher32=True)
    for k, v in {**old, **attrs}.items():
        d.attrs[k] = v


def _attr(name, value):
    def mutate(f):
        f.attrs[name] = value

    return mutate


def _del_attr(name):
    def mutate(f):
        del f.attrs[name]

    return mutate


def _data(key, fn, **attrs):
    def mutate(f):
        _replace(f, key, fn(f[key][...]), **attrs)

    return mutate


def _node_attr(key, name, value):
    def mutate(f):
        f[key].attrs[name] = value

    return mutate


def _delete(key):
    def mutate(f):
        del f[key]

    return mutate


def _set(a, i, v):
    a = a.copy()
    a[i] = v
    return a


def _rename_group(f):
    f.move("fewshot/shot_1-seed_1", "fewshot/shot_x-seed_1")


TEXT = "text/synthetic/features"
# (case, damage, what open/verify say, seen only when the features are read)
CASES = [
    ("schema other", _attr("schema", "other/1"), "schema", False),
    ("schema missing", _del_attr("schema"), "schema", False),
    ("provenance not JSON", _attr("provenance", "{not json"), "provenance is not valid JSON", False),
    ("provenance a list", _attr("provenance", "[1, 2]"), "provenance is not a JSON object", False),
    ("provenance embed_dim a string", _attr("provenance", '{"embed_dim": "8"}'), "embed_dim", False),
    ("backbone ..", _attr("backbone", ".."), "not a usable name", False),
    ("dataset empty", _attr("dataset", ""), "not a usable name", False),
    ("backbone a number", _attr("backbone", np.int64(3)), "backbone is not a string", False),
    ("dataset with a control character", _attr("dataset", "a\nb"), "control characters", False),
    ("default templates unknown", _attr("default_templates", "nope"), "default_templates 'nope'", False),
    ("class names missing", _delete("classes/names"), "classes/names missing", False),
    ("class names numbers", _data("classes/names", lambda a: np.arange(len(a))), "classes/names: expected", False),
    ("no text features", _delete("text"), "no text", False),
    ("text float64", _data(TEXT, lambda a: a.astype(np.float64)), "expected float32 [C, d]", False),
    ("text: an extra row (a phantom class)", _data(TEXT, lambda a: np.vstack([a, a[:1]])), "5 rows for 4", False),
    ("text: a row short", _data(TEXT, lambda a: a[:-1]), "3 rows for 4 classes", False),
    ("text wider than the images", _data(TEXT, lambda a: np.hstack([a, a[:, :1]])), "differs from the text", False),
    ("text NaN", _data(TEXT, lambda a: _set(a, (1, 2), np.nan)), "non-finite", False),
    ("templates attr garbage", _node_attr(TEXT, "templates", "{nope"), "templates is not a JSON list", False),
    ("train features rank 2", _data("splits/train/features", lambda a: a[:, 0]), "expected float16 [n, V", False),
    ("test features too wide", _data("splits/test/features", lambda a: np.pad(a, ((0, 0), (0, 0), (0, 3)))),
     "dimension 11 differs", False),
    ("val features float32", _data("splits/val/features", lambda a: a.astype(np.float32)), "expected float16", False),
    ("train features with no view", _data("splits/train/features", lambda a: a[:, :0]), "V >= 1", False),
    ("train labels float", _data("splits/train/labels", lambda a: a.astype(np.float64)), "expected integers", False),
    ("test labels >= C", _data("splits/test/labels", lambda a: _set(a, 0, C)), "class ids outside 0..3", False),
    ("val labels < 0", _data("splits/val/labels", lambda a: _set(a, 0, -1)), "class ids outside 0..3", False),
    ("train labels short", _data("splits/train/labels", lambda a: a[:-1]), "labels for", False),
    ("test labels missing", _delete("splits/test/labels"), "missing labels", False),
    ("index negative", _data("splits/test/index", lambda a: _set(a, 0, -5)), "negative manifest rows", False),
    ("index float", _data("splits/val/index", lambda a: a.astype(np.float32)), "expected integers", False),
    ("views not JSON", _node_attr("splits/train/features", "views", "center,hflip"), "attribute views", False),
    ("views a number", _node_attr("splits/train/features", "views", "3"), "attribute views", False),
    ("views too few", _node_attr("splits/train/features", "views", '["center"]'), "2 views but", False),
    ("few-shot rows float", _data("fewshot/shot_1-seed_1/train", lambda a: a.astype(np.float64)),
     "expected integer row positions", False),
    ("few-shot rows past the split", _data("fewshot/shot_1-seed_1/train", lambda a: _set(a, 0, 10_000)),
     "row positions outside", False),
    ("few-shot rows negative", _data("fewshot/shot_1-seed_1/val", lambda a: _set(a, 0, -1)),
     "row positions outside", False),
    ("few-shot val missing", _delete("fewshot/shot_1-seed_1/val"), "shot_1-seed_1/val missing", False),
    ("few-shot group misnamed", _rename_group, "name does not match", False),
    ("test features NaN", _data("splits/test/features", lambda a: _set(a, (0, 0, 0), np.nan)), "non-finite", True),
    ("train features inf", _data("splits/train/features", lambda a: _set(a, (3, 1, 2), np.inf)), "non-finite", True),
]  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sound cache, and a run fitted on it (to score on the damaged ones)."""
    d = tmp_path_factory.mktemp("good")
    path, _ = make_cache(d / "good.h5", C=C, d=D, shots=(1,), seeds=(1,), train_per_class=4, val_per_class=2,
                         test_per_class=5, wnids=True)  # fmt: skip
    cache = open_cache(path)
    result, arrays = fit_run(cache, 1, 1, method="zero-shot")
    run = save_run(cache, result, arrays, d / "runs")
    cache.close()
    return path, run, json.loads(cli(["eval", "--run", run, "--cache", path, "--json"]).stdout)["test_acc"]


def _damaged(good, tmp_path, damage):
    path = tmp_path / "bad.h5"
    path.write_bytes(good[0].read_bytes())
    with h5py.File(path, "r+") as f:
        damage(f)
    return path


def _refused(r, *, json_out: bool):
    """A command that refused: exit 2, one error line, no traceback, no accuracy."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "error:" in r.output
    if json_out:
        out = json.loads(r.stdout)
        assert set(out) == {"error", "hint", "exit_code"}, out  # the error, and no numbers
    return r


@pytest.mark.parametrize("case,damage,fragment,on_read", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_cache_is_refused_with_one_message(good, tmp_path, case, damage, fragment, on_read):
    path = _damaged(good, tmp_path, damage)
    problems = verify_cache(path)
    assert any(fragment in p for p in problems), problems
    if on_read:
        cache = open_cache(path)  # attributes and small arrays are sound ...
        with pytest.raises(CmmError, match=fragment):  # ... the features are refused when read
            for split in ("train", "val", "test"):
                cache.split(split)
        cache.close()
    else:
        with pytest.raises(CmmError) as e:
            open_cache(path)
        assert fragment in e.value.message or (fragment == "schema" and "schema" in e.value.message), e.value
    common = ["--cache", path, "--shots", "1", "--seeds", "1", "--json"]
    _refused(cli(["fit", *common, "--iterations", "5"], ok=False), json_out=True)
    _refused(cli(["compare", *common, "--methods", "zero-shot,cmm", "--max-iterations", "5", "--no-save"],
                 ok=False), json_out=True)  # fmt: skip
    r = cli(["eval", "--run", good[1], "--cache", path, "--json"], ok=False)
    if case.startswith("train features") and on_read:  # eval reads only the test split, which is sound here:
        assert r.exit_code == 0 and json.loads(r.stdout)["test_acc"] == good[2]  # the right number
    else:
        _refused(r, json_out=True)
    r = cli(["cache", "verify", path], ok=False)  # verify: "damaged" and the problems, exit status 1
    assert r.exit_code == 1 and "damaged" in r.output and "Traceback" not in r.output, r.output


def test_the_sound_cache_passes_every_command(good, tmp_path):
    """The control: the undamaged cache is accepted by the same commands."""
    assert verify_cache(good[0]) == []
    common = ["--cache", good[0], "--shots", "1", "--seeds", "1", "--json"]
    out = json.loads(cli(["fit", *common, "--iterations", "5", "--runs-dir", tmp_path]).stdout)
    assert 0 <= out["test_acc"] <= 100
    assert json.loads(cli(["eval", "--run", good[1], "--cache", good[0], "--json"]).stdout)["test_acc"] >= 0
