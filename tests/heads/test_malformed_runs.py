"""Damaged run folders: every case gets one clear message, no traceback, no wrong number.

Each case damages one file of a sound run folder (a CMM run, or a Tip-Adapter run for its integer key
labels). For every case:

- ``load_run`` (what eval, predict and export read) refuses it with a message naming the problem;
- ``cmm-cache eval --run`` ends with exit status 2 and one ``error:`` line, no traceback, no accuracy;
- ``cmm-cache results merge`` never fails on it: a run whose result.json is malformed is listed as damaged
  and left out of the summary (no number from it), one whose other files are damaged keeps its recorded,
  valid numbers.
"""

import json
import shutil

import numpy as np
import pytest
from support.synth import make_cache
from support.tiny_run import cli

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run
from cmm_cache.runs.protocol import fit_run
from cmm_cache.runs.store import save_run

C, D = 4, 8


def _result(fn):
    def mutate(run):
        r = json.loads((run / "result.json").read_text())
        fn(r)
        (run / "result.json").write_text(json.dumps(r))

    return mutate


def _json(name, fn):
    def mutate(run):
        (run / name).write_text(json.dumps(fn(json.loads((run / name).read_text()))))

    return mutate


def _raw(name, data: bytes):
    def mutate(run):
        (run / name).write_bytes(data)

    return mutate


def _arrays(fn):
    def mutate(run):
        with np.load(run / "weights.npz") as z:
            a = {k: z[k] for k in z.files}
        fn(a)
        np.savez(run / "weights.npz", **a)

    return mutate


def _set(d, key, value):
    d[key] = value


def _head_param(key, value):
    return _result(lambda r: r["head"]["params"].__setitem__(key, value))


def _classes(fn):
    return _json("classes.json", fn)


def _legacy_bad_fusion(r):
    del r["head"]
    r["config"]["fusion"] = "max"


def _pickled_array(run):
    np.savez(run / "weights.npz", T=np.array([object()], dtype=object))


# (case, kind of run, damage, what the message says, damage in result.json)
CASES = [
    ("result.json not JSON", "cmm", _raw("result.json", b"{nope"), "not JSON", True),
    ("result.json not UTF-8", "cmm", _raw("result.json", b"\xff\xfe{}"), "not JSON", True),
    ("result.json a list", "cmm", _raw("result.json", b"[1, 2]"), "not an object", True),
    ("alpha a string", "cmm", _result(lambda r: _set(r, "alpha", "0.5")), "field 'alpha'", True),
    ("alpha NaN", "cmm", _result(lambda r: _set(r, "alpha", float("nan"))), "field 'alpha'", True),
    ("alpha negative", "cmm", _result(lambda r: _set(r, "alpha", -1.0)), "expected >= 0", True),
    ("shots a string", "cmm", _result(lambda r: _set(r, "shots", "4")), "field 'shots'", True),
    ("shots zero", "cmm", _result(lambda r: _set(r, "shots", 0)), "at least 1", True),
    ("seed a float", "cmm", _result(lambda r: _set(r, "seed", 1.5)), "field 'seed'", True),
    ("test_acc a string", "cmm", _result(lambda r: _set(r, "test_acc", "high")), "field 'test_acc'", True),
    ("test_acc 150", "cmm", _result(lambda r: _set(r, "test_acc", 150.0)), "not a percentage", True),
    ("val_acc true", "cmm", _result(lambda r: _set(r, "val_acc", True)), "field 'val_acc'", True),
    ("dataset missing", "cmm", _result(lambda r: r.pop("dataset")), "field 'dataset' missing", True),
    ("backbone null", "cmm", _result(lambda r: _set(r, "backbone", None)), "field 'backbone' missing", True),
    ("config a list", "cmm", _result(lambda r: _set(r, "config", [1])), "field 'config'", True),
    ("config.method a list", "cmm", _result(lambda r: r["config"].__setitem__("method", ["x"])),
     "config.method", True),
    ("head a string", "cmm", _result(lambda r: _set(r, "head", "cmm")), "field 'head'", True),
    ("head kind unknown", "cmm", _result(lambda r: r["head"].__setitem__("kind", "mystery")),
     "Unknown classifier head", False),
    ("head alpha a string", "cmm", _head_param("alpha", "1.0"), "param 'alpha'", False),
    ("head fusion unknown", "cmm", _head_param("fusion", "max"), "param 'fusion'", False),
    ("head cmm_only a string", "cmm", _head_param("cmm_only", "no"), "param 'cmm_only'", False),
    ("legacy run, fusion unknown", "cmm", _result(_legacy_bad_fusion), "param 'fusion'", False),
    ("classes.json not JSON", "cmm", _raw("classes.json", b"names"), "classes.json is not JSON", False),
    ("class names missing", "cmm", _classes(lambda c: {"wnids": None}), "no list of class names", False),
    ("class names numbers", "cmm", _classes(lambda c: {"names": [1, 2, 3, 4]}), "no list of class names", False),
    ("fewer class names than prototypes", "cmm", _classes(lambda c: {**c, "names": c["names"][:-1]}),
     "other parts say 3", False),
    ("more class names than prototypes", "cmm", _classes(lambda c: {**c, "names": c["names"] + ["x"]}),
     "other parts say 5", False),
    ("wnids of the wrong length", "cmm", _classes(lambda c: {**c, "wnids": ["n1"]}), "wnids do not match", False),
    ("provenance a list", "cmm", _raw("provenance.json", b"[]"), "not an object", False),
    ("provenance weights sha256 garbage", "cmm", _json("provenance.json", lambda p: {**p, "weights_sha256": "abc"}),
     "not a sha256", False),
    ("provenance embed_dim a string", "cmm", _json("provenance.json", lambda p: {**p, "embed_dim": "8"}),
     "'embed_dim'", False),
    ("provenance embed_dim wrong", "cmm", _json("provenance.json", lambda p: {**p, "embed_dim": 512}),
     "provenance says 512-d", False),
    ("weights.npz missing", "cmm", lambda run: (run / "weights.npz").unlink(), "weights.npz missing", False),
    ("weights.npz not a zip", "cmm", _raw("weights.npz", b"PK\x03\x04garbage"), "weights.npz cannot be read", False),
    ("weights.npz with a pickled array", "cmm", _pickled_array, "weights.npz cannot be read", False),
    ("T of the wrong width", "cmm", _arrays(lambda a: _set(a, "T", np.zeros((C, D + 1), np.float32))),
     "array 'T' has", False),
    ("W not square", "cmm", _arrays(lambda a: _set(a, "W", np.zeros((D, D + 1), np.float32))), "array 'W' has", False),
    ("T0 rank 1", "cmm", _arrays(lambda a: _set(a, "T0", np.zeros(C * D, np.float32))), "array 'T0' has shape", False),
    ("W NaN", "cmm", _arrays(lambda a: a["W"].__setitem__((0, 0), np.nan)), "NaN or infinite", False),
    ("T0 inf", "cmm", _arrays(lambda a: a["T0"].__setitem__((1, 1), np.inf)), "NaN or infinite", False),
    ("T int8", "cmm", _arrays(lambda a: _set(a, "T", a["T"].astype(np.int8))), "expected float16/32/64", False),
    ("T missing", "cmm", _arrays(lambda a: a.pop("T")), "array 'T' missing", False),
    ("T0 missing", "cmm", _arrays(lambda a: a.pop("T0")), "array 'T0' missing", False),
    ("tip key labels >= C", "tip-adapter", _arrays(lambda a: a["key_labels"].__setitem__(0, C)),
     "indices outside 0..3", False),
    ("tip key labels float", "tip-adapter", _arrays(lambda a: _set(a, "key_labels", a["key_labels"] + 0.5)),
     "expected integers", False),
    ("tip keys of another width", "tip-adapter", _arrays(lambda a: _set(a, "keys", a["keys"][:, :-1])),
     "array 'keys' has", False),
    ("tip beta missing", "tip-adapter", _result(lambda r: r["head"]["params"].pop("beta")),
     "param 'beta' missing", False),
]  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good-runs")
    path, _ = make_cache(d / "c.h5", C=C, d=D, shots=(2,), seeds=(1,), train_per_class=4, val_per_class=2,
                         test_per_class=5)  # fmt: skip
    cache = open_cache(path)
    runs = {}
    for method, opts in (("cmm", {"iterations": 20}), ("tip-adapter", {})):
        result, arrays = fit_run(cache, 2, 1, method=method, options=opts)
        runs[method] = save_run(cache, result, arrays, d / "runs")
    cache.close()
    return path, runs


@pytest.mark.parametrize("case,kind,damage,fragment,in_result", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_folder_is_refused_with_one_message(good, tmp_path, case, kind, damage, fragment, in_result):
    cache, runs = good
    run = tmp_path / "runs" / "r"
    shutil.copytree(runs[kind], run)
    damage(run)
    with pytest.raises(CmmError) as e:
        load_run(run)
    assert fragment in e.value.message, e.value.message
    r = cli(["eval", "--run", run, "--cache", cache, "--json"], ok=False)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
    assert set(json.loads(r.stdout)) == {"error", "hint", "exit_code"}  # no accuracy
    # results merge: never a traceback; a malformed result.json is reported and gives no number.
    sound = tmp_path / "runs" / "sound"
    shutil.copytree(runs[kind], sound)
    m = cli(["results", "merge", tmp_path / "runs", "--json"], ok=False)
    assert m.exit_code == 0 and "Traceback" not in m.output, m.output
    out = json.loads(m.stdout)
    merged = {row["run"] for row in out["runs"]}
    if in_result:
        assert merged == {str(sound)} and [d["path"] for d in out["damaged"]] == [str(run / "result.json")]
        assert out["summary"][0]["runs"] == 1
    else:
        assert str(run) in merged  # its recorded numbers were valid when it was fitted
        assert all(0 <= row["test_acc"] <= 100 for row in out["runs"])


def test_the_sound_runs_load_and_score(good):
    """The control: the undamaged runs pass the same checks."""
    cache, runs = good
    for run in runs.values():
        assert load_run(run).head is not None
        out = json.loads(cli(["eval", "--run", run, "--cache", cache, "--json"]).stdout)
        assert 0 <= out["test_acc"] <= 100


@pytest.mark.parametrize("field,value", [("alpha", "0.5"), ("val_acc", None), ("warnings", [1])])
def test_fitting_again_over_a_damaged_run_is_one_message_and_force_replaces_it(good, tmp_path, field, value):
    cache, _ = good
    args = ["fit", "--cache", cache, "--method", "zero-shot", "--shots", "2", "--seed", "1", "--runs-dir", tmp_path]
    first = json.loads(cli([*args, "--json"]).stdout)
    r = json.loads((tmp_path / first["run"] / "result.json").read_text())
    r[field] = value
    (tmp_path / first["run"] / "result.json").write_text(json.dumps(r))
    again = cli(args, ok=False)
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "holds another run" in text and "--force" in text and "Traceback" not in text
    out = json.loads(cli([*args, "--force", "--json"]).stdout)
    assert out["test_acc"] == first["test_acc"] and out["replaced"] is True
    assert load_run(out["run"]).result[field] != value
