"""`compare`: methods × shots × seeds on one cache, the table, CSV, plot, and the command as a user runs it."""

import csv
import json
import sys

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.figures import is_figure
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run
from cmm_cache.methods.registry import registered_methods
from cmm_cache.runs.compare import compare, long_rows, plot, resolve_methods, table
from cmm_cache.runs.protocol import plan
from cmm_cache.runs.store import target_dir


def _runs(values):
    """values: {(method, shots): [test accs over seeds]} -> run rows."""
    return [
        {"method": m, "shots": k, "seed": i + 1, "test_acc": a, "fit_seconds": 0.5}
        for (m, k), accs in values.items()
        for i, a in enumerate(accs)
    ]


def test_table_is_mean_and_sample_std_with_the_best_of_each_column_marked():
    runs = _runs({("a", 1): [50, 60], ("b", 1): [55, 55], ("a", 4): [70, 80], ("b", 4): [75, 75], ("c", 4): [10]})
    rows = table(runs, ["a", "b", "c"], [1, 4])
    a, b, c = rows
    assert a["cells"][1] == {
        "mean": 55.0,
        "std": pytest.approx(7.071, abs=1e-3),
        "runs": 2,
        "best": True,
        "fit_seconds_mean": 0.5,
    }
    assert b["cells"][1]["best"] and b["cells"][1]["std"] == 0.0  # a tie: both marked
    assert a["cells"][4]["best"] and b["cells"][4]["best"] and not c["cells"][4]["best"]
    assert c["cells"][1] == {"mean": None, "std": 0.0, "runs": 0, "best": False, "fit_seconds_mean": None}
    assert c["cells"][4]["std"] == 0.0
    flat = long_rows(rows)
    assert len(flat) == 6 and flat[0] == {
        "method": "a",
        "shots": 1,
        "test_acc_mean": 55.0,
        "test_acc_std": pytest.approx(7.071, abs=1e-3),
        "runs": 2,
        "best": True,
        "fit_seconds_mean": 0.5,
    }


def test_method_lists_and_missing_subsets_are_clear(tmp_path):
    assert resolve_methods("all") == registered_methods()
    assert resolve_methods("gda, zero-shot,gda") == ["gda", "zero-shot"]
    with pytest.raises(CmmError, match="Unknown method 'nope'"):
        resolve_methods("zero-shot,nope")
    cache = open_cache(make_text_cache(tmp_path / "c.h5", shots=(1, 4), seeds=(1, 2)))
    assert plan(cache) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    with pytest.raises(CmmError, match="8-shot/seed 1, 8-shot/seed 2"):  # every missing subset, in one message
        plan(cache, [8], [1, 2])


def test_compare_fits_every_run_saves_it_and_tabulates_it(tmp_path):
    cache = open_cache(make_text_cache(tmp_path / "c.h5"))
    seen = []
    out = compare(
        cache,
        "zero-shot,tip-adapter,cmm",
        [1, 4],
        [1, 2],
        max_iterations=30,
        runs_root=tmp_path / "runs",
        progress=lambda d, n, r: seen.append((d, n)),
    )
    assert out["methods"] == ["zero-shot", "tip-adapter", "cmm"] and len(out["runs"]) == 12 and seen[-1] == (12, 12)
    for r in out["runs"]:
        run = load_run(r["run"])
        assert run.result["method"] == r["method"] and run.result["test_acc"] == r["test_acc"]
        assert r["run"] == str(target_dir(cache, run.result, tmp_path / "runs"))  # the shared runs layout
        assert f"/{r['method']}-" in r["run"] and r["run"].endswith(f"shot_{r['shots']}-seed_{r['seed']}")
    cmm = [r for r in out["runs"] if r["method"] == "cmm"]
    assert all(load_run(r["run"]).result["config"]["iterations"] == 30 for r in cmm)  # the cap is recorded
    zs = out["table"][0]["cells"][4]
    accs = [r["test_acc"] for r in out["runs"] if r["method"] == "zero-shot" and r["shots"] == 4]
    assert zs["mean"] == pytest.approx(sum(accs) / 2, abs=1e-3) and zs["runs"] == 2


def test_plot_png_svg_and_clear_errors(tmp_path, monkeypatch):
    rows = table(_runs({("a", 1): [50, 60], ("a", 4): [70, 80], ("b", 1): [40], ("b", 4): [90]}), ["a", "b"], [1, 4])
    png = plot(rows, tmp_path / "p.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in plot(rows, tmp_path / "p.svg").read_bytes()[:2000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "p.svg"]  # no temp file left
    with pytest.raises(CmmError, match=r"\.png or \.svg"):
        plot(rows, tmp_path / "p.pdf")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the [plot] extra were not installed
    with pytest.raises(CmmError, match=r"cmm-cache\[plot\]"):
        plot(rows, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def _run(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_compare_command_json_csv_plot(tmp_path):
    path = make_text_cache(tmp_path / "c.h5")
    args = ["compare", "--cache", str(path), "--methods", "zero-shot,gda,linear-probe", "--shots", "1,4"]
    args += ["--seeds", "1,2", "--runs-dir", str(tmp_path / "runs"), "--csv", str(tmp_path / "t.csv")]
    r = _run(args + ["--plot", str(tmp_path / "t.svg"), "--json", "--option", "gda.alphas=[1.0, 10.0]"])
    out = json.loads(r.stdout)
    assert "[1/12] zero-shot" in r.stderr and "[12/12] linear-probe" in r.stderr  # progress on stderr with --json
    assert [row["method"] for row in out["table"]] == ["zero-shot", "gda", "linear-probe"]
    assert set(out["table"][0]["cells"]) == {"1", "4"} and out["csv"] and out["plot"]
    assert {r["hparams"]["alpha"] for r in out["runs"] if r["method"] == "gda"} <= {1.0, 10.0}
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["method"] == "zero-shot"
    bad = CliRunner().invoke(main, ["compare", "--cache", str(path), "--methods", "nope"])
    assert bad.exit_code == 2 and "Unknown method" in bad.output
    bad = CliRunner().invoke(main, ["compare", "--cache", str(path), "--option", "gda-alpha"])
    assert bad.exit_code == 2 and "METHOD.KEY=VALUE" in bad.output


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_all_methods(tmp_path):
    """What CI runs: extract the tiny dataset (augmented views and block inputs too), then compare every method
    (steps capped), table and plot."""
    _run(["extract", "--dataset", "tiny", "--backbone", "tiny", "--train-views", "4", "--finetune-blocks", "1"])
    args = ["compare", "--methods", "all", "--shots", "1,16", "--seeds", "1", "--max-iterations", "20"]
    out = json.loads(_run(args + ["--plot", str(tmp_path / "tiny.png"), "--json"]).stdout)
    assert [r["method"] for r in out["table"]] == registered_methods() and len(out["runs"]) == 2 * len(out["table"])
    assert {"cross-modal-partial-ft", "cross-modal-adapter", "lp++", "clap"} <= set(out["methods"])
    assert out["not_run"] == {}
    views = {r["method"]: r["train_views"] for r in out["runs"]}
    assert views["gda"] == ["rrc-1", "rrc-2"] and views["cmm"] == ["center", "hflip"] and views["lp++"] == ["rrc-1"]
    assert out["dataset"] == "tiny" and all(c["mean"] is not None for r in out["table"] for c in r["cells"].values())
    assert (tmp_path / "tiny.png").is_file()


def test_bench_methods_command():
    r = _run(["bench", "methods", "--classes", "4", "--dim", "16", "--shots", "2", "--repeat", "1", "--json"])
    out = json.loads(r.stdout)
    names = [m["method"] for m in out["methods"]]
    assert names == ["zero-shot", "tip-adapter", "gda"] and all(is_figure(m["seconds"]) for m in out["methods"])
    assert "cores, load average" in out["machine"]  # the figures say what machine and load they came from


def test_compare_reads_each_cache_split_once_for_every_method_and_run(tmp_path, monkeypatch):
    from cmm_cache.cache.reader import Cache

    reads = []
    real = Cache.split
    monkeypatch.setattr(Cache, "split", lambda self, name: reads.append(name) or real(self, name))
    cache = open_cache(make_text_cache(tmp_path / "c.h5"))
    out = compare(cache, "zero-shot,gda,cmm", [1, 4], [1, 2], max_iterations=20)
    assert len(out["runs"]) == 12
    assert sorted(reads) == ["test", "train", "val"]


# ----------------------------------------------------------------------------------------- checks and sharing


def test_compare_checks_what_methods_need_before_training(tmp_path):
    """A cache without per-template text: cross-modal-lp is refused before zero-shot (listed first) is fitted."""
    from support.synth import make_cache

    path, _ = make_cache(tmp_path / "plain.h5", C=4, d=12, shots=(1,), seeds=(1,))
    runs = tmp_path / "runs"
    with pytest.raises(CmmError, match="Nothing was fitted") as e:
        compare(open_cache(path), "zero-shot,cross-modal-lp,cross-modal-wise-ft", [1], [1], runs_root=runs)
    assert "per-template text" in e.value.message and "cross-modal-wise-ft" in e.value.message
    assert e.value.hint.count("--add-text") == 1  # one command adds what both need
    assert not runs.exists() or not list(runs.rglob("result.json"))


def test_compare_trains_the_cross_modal_grid_once_per_subset(tmp_path, monkeypatch):
    """cross-modal-lp and cross-modal-wise-ft share one grid per (shots, seed); the wise-ft run is the very run
    it would be when fitted alone (same head, same accuracy)."""
    import cmm_cache.methods.wise_ft as wise_ft
    from cmm_cache.runs.protocol import fit_run

    path = make_text_cache(tmp_path / "t.h5", shots=(1, 4), seeds=(1,))
    calls = []
    real = wise_ft.train_grid
    monkeypatch.setattr(wise_ft, "train_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = {"iterations": 200}
    both = {"cross-modal-lp": opts, "cross-modal-wise-ft": opts}
    out = compare(open_cache(path), list(both), [1, 4], [1], options=both, runs_root=tmp_path / "runs")
    assert len(calls) == 2  # one grid per subset, not one per method and subset
    wise = [r for r in out["runs"] if r["method"] == "cross-modal-wise-ft"]
    assert all(
        [(s["name"], s["reused"]) for s in r["shared_fits"]] == [("cross-modal-linear-grid", True)] for r in wise
    )
    lp = [r for r in out["runs"] if r["method"] == "cross-modal-lp"]
    assert all(r["shared_fits"][0]["reused"] is False for r in lp)
    calls.clear()
    alone, arrays = fit_run(open_cache(path), 4, 1, method="cross-modal-wise-ft", options=opts)
    assert len(calls) == 1 and "shared_fits" not in alone
    shared = load_run(wise[1]["run"])
    assert alone["test_acc"] == wise[1]["test_acc"] and alone["hparams"] == wise[1]["hparams"]
    assert (shared.head.state()[0]["weight"] == arrays["weight"]).all()
