"""`cmm-cache gap` end to end: numbers against a plain numpy computation from the cache and run files,
pictures as files, CMM's Fig. 10 from four ablation runs in one call, and every user mistake as one
clear message before anything is computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.synth import make_cache, make_shift_cache
from support.tiny_run import tiny_run

from cmm_cache.analysis import gap, gap_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIT_FAST = ["--iterations", "2000", "--lr", "1e-3"]


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ok(args) -> dict:
    r = invoke([*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def fit(cache, runs_dir, *extra, shots=4, seed=1) -> Path:
    r = invoke(["fit", "--cache", cache, "--shots", shots, "--seed", seed, "--runs-dir", runs_dir, *extra, "--json"])
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.stdout)["run"])


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    import matplotlib.image

    img = matplotlib.image.imread(str(path))  # decodes: a valid PNG, not only a header
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300


# ----------------------------------------------------------------------------
# An independent computation: numpy only, straight from the HDF5 file and the run folder


def unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def read_cache(path, split, rows=None):
    """(centre view normalized [n, d], labels, every view of the rows [n, V, d], default text [C, d])."""
    with h5py.File(path, "r") as f:
        g = f[f"splits/{split}"]
        views = json.loads(g["features"].attrs["views"])
        feats = g["features"][...].astype(np.float32)
        labels = g["labels"][...].astype(np.int64)
        text = f[f"text/{f.attrs['default_templates']}/features"][...]
    if rows is not None:
        feats, labels = feats[rows], labels[rows]
    return unit(feats[:, views.index("center")]), labels, feats, unit(text)


def fewshot_rows(path, shots, seed):
    with h5py.File(path, "r") as f:
        return f[f"fewshot/shot_{shots}-seed_{seed}/train"][...].astype(np.int64)


def reference_measures(v, y, t):
    """Every gap measure by its formula (docs/gap.md), on the full matrices."""
    v, t = unit(v), unit(t)
    C = len(t)
    present = np.unique(y)
    means = np.stack([v[y == c].mean(0) for c in present])
    mu = unit(means)
    tp = t[present]
    sim = v @ t.T
    matched = sim[np.arange(len(y)), y]
    mismatched = sim[np.arange(C)[None, :] != y[:, None]]
    G = v @ v.T
    iu = np.triu_indices(len(y), 1)
    image_image = G[iu][(y[:, None] != y[None, :])[iu]]
    # RMG as lmb-freiburg/two-effects-one-trigger's compute_rmg (classification): diagonal zeroed, n² − n pairs
    m = 1 - (matched.mean() + 1) / 2
    m = m if m > 0 else 1e-3
    Gz = G.copy()
    np.fill_diagonal(Gz, 0)
    Tt = t @ t.T
    np.fill_diagonal(Tt, 0)
    d_i = 1 - (Gz.sum() / (len(y) ** 2 - len(y)) + 1) / 2
    d_t = 1 - (Tt.sum() / (C * C - C) + 1) / 2
    return {
        "l2m": np.linalg.norm(means.mean(0) - tp.mean(0)),
        "l2m_normalized_means": np.linalg.norm(mu.mean(0) - tp.mean(0)),
        "proto_l2": np.linalg.norm(mu - tp, axis=1).mean(),
        "proto_cos": (mu * tp).sum(1).mean(),
        "rmg": m / (m + (d_i + d_t) / 2),
        "matched": matched,
        "mismatched": mismatched,
        "image_image": image_image,
    }


def assert_measures_match(got: dict, ref: dict, atol=2e-5):
    assert got["l2m"] == pytest.approx(ref["l2m"], abs=atol)
    assert got["prototype_gap"]["l2"] == pytest.approx(ref["proto_l2"], abs=atol)
    assert got["prototype_gap"]["cos"] == pytest.approx(ref["proto_cos"], abs=atol)
    assert got["rmg"] == pytest.approx(ref["rmg"], abs=atol)
    for name in gap.DISTRIBUTIONS:
        d, vals = got["similarities"][name], ref[name]
        assert d["count"] == len(vals) and d["percentiles_from"] == "all"
        assert d["mean"] == pytest.approx(vals.mean(), abs=atol)
        for q in (5, 50, 95):
            assert d[f"p{q}"] == pytest.approx(np.percentile(vals, q), abs=atol)
    if "l2m_normalized_means" in got:
        assert got["l2m_normalized_means"] == pytest.approx(ref["l2m_normalized_means"], abs=atol)


def reference_run(run_dir: Path, cache: Path, split="test"):
    """The run's "after" inputs, Fig. 3 and Fig. 9 by hand from weights.npz and result.json."""
    res = json.loads((run_dir / "result.json").read_text())
    z = np.load(run_dir / "weights.npz")
    W, T, T0 = (z["W"].astype(np.float64) if "W" in z.files else None), z["T"].astype(np.float64), z["T0"]
    v, y, _, _ = read_cache(cache, split)
    after_v = unit(v @ W + v) if W is not None else v
    cmm = 100 * after_v @ (unit(T) if res["head"]["params"]["normalize_T_in_s"] else T).T
    clip = 100 * v @ unit(T0).T

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    alpha = res["alpha"]
    fused = alpha * softmax(cmm) + softmax(clip)
    Z, M, F = clip.argmax(1), cmm.argmax(1), fused.argmax(1)
    _, _, tr_all, _ = read_cache(cache, "train")
    rows = fewshot_rows(cache, res["shots"], res["seed"])
    tr = tr_all[rows]  # [m, V, d]: every view is a sample
    ytr = np.repeat(read_cache(cache, "train")[1][rows], tr.shape[1])
    xtr = unit(tr.reshape(-1, tr.shape[2]))
    protos = unit(np.stack([xtr[ytr == c].mean(0) for c in range(len(T0))]))
    zw, mw = Z != y, M != y
    errors = zw | mw
    return {
        "after": reference_measures(after_v, y, T),
        "intra": 100 * np.mean((v @ protos.T).argmax(1) == y),
        "inter": 100 * np.mean(Z == y),
        "cross": 100 * np.mean(M == y),
        "head": 100 * np.mean(F == y),
        "inconsistent": (int((errors & (Z != M)).sum()), int(errors.sum())),
        "correct_flips": (int((zw & (F == y)).sum()), int(zw.sum())),
        "broken": (int((~zw & (F != y)).sum()), int((~zw).sum())),
    }


def assert_run_matches(entry: dict, ref: dict):
    assert_measures_match(entry["after"], ref["after"])
    ct = entry["classifier_types"]
    assert ct["intra_modal"] == pytest.approx(ref["intra"], abs=1e-9)
    assert ct["inter_modal"] == pytest.approx(ref["inter"], abs=1e-9)
    assert ct["cross_modal"] == pytest.approx(ref["cross"], abs=1e-9)
    assert ct["run_head"] == pytest.approx(ref["head"], abs=1e-9)
    for key in ("inconsistent", "correct_flips", "broken"):
        name = "inconsistent_errors" if key == "inconsistent" else key
        share = entry["error_flips"][name]
        assert (share["count"], share["of"]) == ref[key]


# ----------------------------------------------------------------------------
# A planted-gap cache and its runs (one per module: fits take seconds)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    cache, world = make_cache(root / "synth.h5", shots=(2, 4), seeds=(1,))
    runs = root / "runs"
    out = {
        "root": root,
        "cache": cache,
        "world": world,
        "runs_dir": runs,
        "cmm": fit(cache, runs, *FIT_FAST),
        "no_map": fit(cache, runs, "--method", "cmm-no-map", *FIT_FAST),
        "no_triplet": fit(cache, runs, "--method", "cmm-no-triplet", *FIT_FAST),
        "neither": fit(cache, runs, "--set", "use_map=false", "--set", "triplet=false", *FIT_FAST),
        # the control: one step of a negligible learning rate leaves W ≈ 0 and T ≈ T0
        "untrained": fit(cache, runs, "--iterations", "1", "--lr", "1e-12", "--weight-decay", "0"),
    }
    return out


def test_planted_gap_run_measures_equal_a_numpy_computation_and_the_picture_is_a_png(planted, tmp_path):
    png = tmp_path / "gap.png"
    out = ok(["gap", "--run", planted["cmm"], "--plot", png, "--l2m-normalized-means"])
    v, y, _, t = read_cache(planted["cache"], "test")
    assert out["images"] == len(y) == 480 and out["split"] == "test"
    assert_measures_match(out["before"], reference_measures(v, y, t))
    (entry,) = out["runs"]
    assert entry["after_defined"] and entry["label"] == "cmm"
    assert_run_matches(entry, reference_run(planted["cmm"], planted["cache"]))
    assert out["sampling"] == {"seed": 0, "max_pairs": gap.DEFAULT_MAX_PAIRS}
    assert out["cache"]["fitted_on_this_cache"] is True
    assert_png(png)
    assert out["plot"]["path"] == str(png) and len(out["plot"]["panels"]) == 2
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_the_human_table_shows_before_and_after_with_the_title(planted):
    r = invoke(["gap", "--run", planted["cmm"]])
    assert r.exit_code == 0, r.output
    err = r.stderr
    for word in ("synth", "synth-bb", "cmm", "4 shots", "before", "after: cmm", "L2M", "RMG", "Fig. 9"):
        assert word in err, word
    assert r.stdout == ""  # without --json nothing goes to stdout


def test_a_cmm_fit_lowers_the_per_class_prototype_gap_and_an_untrained_run_changes_nothing(planted):
    trained = ok(["gap", "--run", planted["cmm"]])
    untrained = ok(["gap", "--run", planted["untrained"]])
    before = trained["before"]["prototype_gap"]
    after = trained["runs"][0]["after"]["prototype_gap"]
    assert after["l2"] < before["l2"] - 0.1 and after["cos"] > before["cos"] + 0.1
    # the control: the "after" path itself moves nothing (same images, same prototypes up to 1e-12 steps)
    b, a = untrained["before"], untrained["runs"][0]["after"]
    assert untrained["before"] == trained["before"]
    for key in ("l2", "cos"):
        assert a["prototype_gap"][key] == pytest.approx(b["prototype_gap"][key], abs=1e-6)
    assert a["l2m"] == pytest.approx(b["l2m"], abs=1e-6) and a["rmg"] == pytest.approx(b["rmg"], abs=1e-6)


def test_four_ablation_runs_give_one_figure_and_one_table(planted, tmp_path):
    png = tmp_path / "fig10.png"
    keys = ("cmm", "no_map", "no_triplet", "neither")
    args = ["gap", *[x for k in keys for x in ("--run", planted[k])], "--plot", png, "--json"]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    labels = [e["label"] for e in out["runs"]]
    assert labels == ["cmm", "cmm-no-map", "cmm-no-triplet", "cmm (use_map=false, triplet=false)"]
    for k, e in zip(keys, out["runs"]):
        assert_run_matches(e, reference_run(planted[k], planted["cache"]))  # no map: v̂ against T
    assert out["plot"]["panels"] == ["before: CLIP (v̂ vs T0)", *[f"after: {x}" for x in labels]]
    assert_png(png)
    table = gap_run.gap_table(out)
    assert table["columns"] == ["measure", "before", *[f"after: {x}" for x in labels]]
    assert all(len(row) == 6 for row in table["rows"])
    for x in labels:
        assert f"after: {x}" in r.stderr.replace("\n", "")  # one printed table, one column per run


def test_val_and_train_splits_and_fig9_only_on_test(planted):
    val = ok(["gap", "--run", planted["cmm"], "--split", "val"])
    v, y, _, t = read_cache(planted["cache"], "val")
    assert val["images"] == len(y) and val["runs"][0]["error_flips"] is None
    assert "test only" in val["runs"][0]["error_flips_note"]
    assert_measures_match(val["before"], reference_measures(v, y, t))
    train = ok(["gap", "--run", planted["cmm"], "--split", "train"])
    rows = fewshot_rows(planted["cache"], 4, 1)
    v, y, _, t = read_cache(planted["cache"], "train", rows)
    assert train["images"] == len(rows) == 48  # the run's few-shot rows, centre view, not all train rows
    assert_measures_match(train["before"], reference_measures(v, y, t))


def test_a_cache_alone_gives_the_zero_shot_gap_of_all_its_train_rows(planted):
    out = ok(["gap", "--cache", planted["cache"], "--split", "train"])
    v, y, views, t = read_cache(planted["cache"], "train")
    assert out["images"] == len(y) == 12 * 16 and out["runs"] == []
    assert_measures_match(out["before"], reference_measures(v, y, t))
    ct = out["classifier_types"]
    xtr = unit(views.reshape(-1, views.shape[2]))
    ytr = np.repeat(y, views.shape[1])
    protos = unit(np.stack([xtr[ytr == c].mean(0) for c in range(len(t))]))
    assert ct["intra_modal"] == pytest.approx(100 * np.mean((v @ protos.T).argmax(1) == y))
    assert ct["inter_modal"] == pytest.approx(100 * np.mean((v @ t.T).argmax(1) == y))
    assert ct["cross_modal"] is None


def test_heads_without_a_cmm_map_say_what_after_is(planted, tmp_path):
    zs = fit(planted["cache"], tmp_path / "runs", "--method", "zero-shot")
    pl = fit(planted["cache"], tmp_path / "runs", "--method", "prolip-linear")
    out = ok(["gap", "--run", zs, "--run", pl])
    z, p = out["runs"]
    assert z["after"] is None and z["after_definition"].startswith("not defined")
    assert z["error_flips"] is None and z["classifier_types"]["cross_modal"] is None
    # the map head: normalize(v̂ Wᵀ) against T0, checked by hand
    w = np.load(pl / "weights.npz")
    v, y, _, t = read_cache(planted["cache"], "test")
    assert_measures_match(p["after"], reference_measures(unit(v @ w["W"].astype(np.float64).T), y, w["T0"]))
    assert "T0" in p["after_definition"]


def test_the_seed_and_sample_size_are_recorded_and_used(planted):
    a = ok(["gap", "--run", planted["cmm"], "--max-pairs", "1000", "--seed", "3"])
    b = ok(["gap", "--run", planted["cmm"], "--max-pairs", "1000", "--seed", "3"])
    c = ok(["gap", "--run", planted["cmm"], "--max-pairs", "1000", "--seed", "4"])
    ii = a["before"]["similarities"]["image_image"]
    assert a["sampling"] == {"seed": 3, "max_pairs": 1000}
    assert ii["percentiles_from"] == "sample" and ii["sample"] == 1000 and ii["count"] == 105_600
    assert a == b and a["before"]["similarities"] != c["before"]["similarities"]
    assert a["before"]["l2m"] == c["before"]["l2m"]  # means and L2M never depend on the sample


# ----------------------------------------------------------------------------
# The tiny pipeline (a real extraction with the random-weight `tiny` backbone)


@pytest.mark.slow
def test_tiny_run_gap_with_plot_and_json(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    png = tmp_path / "gap.png"
    out = ok(["gap", "--run", t.run, "--plot", png])
    v, y, _, text = read_cache(t.cache, "test")
    assert out["images"] == len(y)
    assert_measures_match(out["before"], reference_measures(v, y, text))
    assert_run_matches(out["runs"][0], reference_run(t.run, t.cache))
    assert_png(png)
    assert "tiny" in out["title"] and "4 shots" in out["title"]


# ----------------------------------------------------------------------------
# Mistakes: one clear message each, nothing computed first


@pytest.fixture
def nothing_computed(monkeypatch):
    """Any call into the measures fails the test: errors must come before the work."""

    def boom(*a, **k):
        raise AssertionError("a measure was computed before the error")

    monkeypatch.setattr(gap, "gap_measures", boom)
    monkeypatch.setattr(gap_run, "compute_gap", boom)


def fails(args, *expected):
    r = invoke(args)
    assert r.exit_code == 2, r.output
    text = " ".join(r.stderr.split())
    for e in expected:
        assert e in text, (e, text)
    assert "Traceback" not in r.output
    return text


def test_a_run_without_its_cache_says_to_point_at_it(planted, tmp_path, nothing_computed):
    moved = tmp_path / "moved.h5"
    shutil.copy(planted["cache"], moved)
    run = fit(moved, tmp_path / "runs", "--iterations", "50")
    elsewhere = tmp_path / "elsewhere.h5"
    moved.rename(elsewhere)
    png = tmp_path / "gap.png"
    text = fails(["gap", "--run", run, "--plot", png, "--cache-dir", tmp_path / "empty"], "is not at", "--cache PATH")
    assert str(moved) in text and not png.exists()


def test_a_moved_cache_is_found_with_cache_and_a_wrong_one_is_refused(planted, tmp_path, monkeypatch):
    moved = tmp_path / "moved.h5"
    shutil.copy(planted["cache"], moved)
    run = fit(moved, tmp_path / "runs", "--iterations", "50")
    elsewhere = tmp_path / "elsewhere.h5"
    moved.rename(elsewhere)
    out = ok(["gap", "--run", run, "--cache", elsewhere])
    assert out["cache"]["path"] == str(elsewhere) and out["cache"]["fitted_on_this_cache"] is True
    other, _ = make_cache(tmp_path / "other.h5", C=7, shots=(4,), seeds=(1,))
    monkeypatch.setattr(gap, "gap_measures", lambda *a, **k: pytest.fail("computed before the error"))
    fails(["gap", "--run", run, "--cache", other], "other classes")


def test_wrong_split_is_one_message(planted, tmp_path, nothing_computed):
    fails(["gap", "--run", planted["cmm"], "--split", "holdout"], "Invalid value for '--split'")
    shift = make_shift_cache(tmp_path / "shift.h5", planted["world"], classes=[0, 1, 2])
    fails(["gap", "--cache", shift, "--split", "val"], "has no 'val' split", "test")


@pytest.mark.parametrize(
    "make_path, expected",
    [
        (lambda d: d / "gap.jpg", "Cannot write a picture as '.jpg'"),
        (lambda d: d / "a-file.txt" / "gap.png", "is not a folder"),
        (lambda d: d / "gap", "Cannot write a picture as 'gap'"),
        (lambda d: d / "folder.png", "is a directory"),
    ],
)
def test_an_unwritable_plot_is_one_message_before_any_work(planted, tmp_path, nothing_computed, make_path, expected):
    (tmp_path / "a-file.txt").write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    fails(["gap", "--run", planted["cmm"], "--plot", make_path(tmp_path)], expected)


def test_a_read_only_folder_is_refused(planted, tmp_path, nothing_computed):
    import os

    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fails(["gap", "--run", planted["cmm"], "--plot", ro / "gap.png"], "not writable")
    finally:
        ro.chmod(0o700)


def test_missing_plot_packages_are_named_before_any_work(planted, tmp_path, nothing_computed, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    fails(["gap", "--run", planted["cmm"], "--plot", tmp_path / "g.png", "--projection", "tsne"], "scikit-learn")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fails(["gap", "--run", planted["cmm"], "--plot", tmp_path / "g.png"], "matplotlib", "pip install")


def test_nothing_to_measure_and_runs_without_a_common_before(planted, tmp_path, nothing_computed):
    fails(["gap"], "Nothing to measure", "--cache FILE", "--run RUN")
    fails(["gap", "--run", tmp_path / "nowhere"], "No run at")
    two = fit(planted["cache"], planted["runs_dir"], "--iterations", "50", shots=2)
    fails(["gap", "--run", planted["cmm"], "--run", two, "--split", "train"], "few-shot subsets differ")
    other, _ = make_cache(tmp_path / "other.h5", seed=5, shots=(4,), seeds=(1,), provenance={"note": "another world"})
    elsewhere = fit(other, tmp_path / "runs", "--iterations", "50")
    fails(["gap", "--run", planted["cmm"], "--run", elsewhere], "fitted on different caches")


def test_json_errors_are_one_object_on_stdout(planted, tmp_path):
    r = invoke(["gap", "--run", planted["cmm"], "--plot", tmp_path / "x.gif", "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["error"].startswith("Cannot write a picture")
