"""`cmm_cache.analysis.report` on hand-made run folders: every number is checked against a plain computation."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from cmm_cache.analysis import report as rp
from cmm_cache.datasets.registry import PAPER_DATASETS
from cmm_cache.errors import CmmError

ELEVEN = PAPER_DATASETS


def run(root: Path, dataset, method, shots, seed, acc, backbone="rn50", key="k1", zs=50.0, fit=1.0, **extra):
    """A run folder as `fit` writes it (only what the report reads)."""
    d = root / dataset / backbone / f"{method}-{key}" / f"shot_{shots}-seed_{seed}"
    d.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": dataset,
        "backbone": backbone,
        "method": method,
        "config_key": key,
        "shots": shots,
        "seed": seed,
        "test_acc": acc,
        "val_acc": acc,
        "zero_shot_test_acc": zs,
        "fit_seconds": fit,
        "config": {"method": method, "device": "cpu"},
        "run_id": f"{dataset}-{method}-{key}-{shots}-{seed}",
        **extra,
    }
    (d / "result.json").write_text(json.dumps(result))
    return d


def rows(path) -> list[dict]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


def test_table1_averages_datasets_then_seeds_and_names_a_subset(tmp_path):
    acc = {("a", 1): 60.0, ("a", 2): 64.0, ("b", 1): 70.0, ("b", 2): 72.0, ("c", 1): 80.0, ("c", 2): 90.0}
    for (d, s), v in acc.items():
        run(tmp_path, d, "cmm", 4, s, v)
        run(tmp_path, d, "gda", 4, s, v - 10) if d != "c" else None
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    t1 = {r["method"]: r for r in rows(out["csv"]["table1-rn50"]) if r["shots"] == "4"}
    per_seed = [statistics.fmean(acc[d, s] for d in "abc") for s in (1, 2)]
    assert float(t1["cmm"]["mean"]) == pytest.approx(statistics.fmean(per_seed), abs=1e-4)
    assert float(t1["cmm"]["std"]) == pytest.approx(statistics.stdev(per_seed), abs=1e-4)
    assert t1["cmm"]["datasets"] == "a;b;c" and t1["cmm"]["datasets_missing"] == ""
    assert float(t1["gda"]["mean"]) == pytest.approx(
        statistics.fmean([v - 10 for (d, _), v in acc.items() if d != "c"])
    )
    assert t1["gda"]["datasets_missing"] == "c"
    md = Path(out["markdown"]).read_text()
    assert "averaged over a, b only (no runs for c)" in md  # never a silent average of a subset
    zero = {r["method"]: r for r in rows(out["csv"]["table1-rn50"])}["zero-shot CLIP"]
    assert float(zero["mean"]) == 50.0 and zero["shots"] == "0"


def test_seeds_that_differ_between_datasets_give_no_std(tmp_path):
    run(tmp_path, "a", "cmm", 1, 1, 60.0)
    run(tmp_path, "a", "cmm", 1, 2, 70.0)
    run(tmp_path, "b", "cmm", 1, 1, 80.0)
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    (r,) = [r for r in rows(out["csv"]["table1-rn50"]) if r["method"] == "cmm"]
    assert float(r["mean"]) == pytest.approx((65.0 + 80.0) / 2) and r["std"] == "" and r["seeds"] == "1"
    assert "different seeds" in Path(out["markdown"]).read_text()


def test_configurations_are_never_averaged_together(tmp_path):
    run(tmp_path, "a", "cmm", 1, 1, 60.0, key="aaaa1111")
    run(tmp_path, "a", "cmm", 1, 1, 90.0, key="bbbb2222")
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    got = {(r["config_key"], r["mean"]) for r in rows(out["csv"]["table1-rn50"]) if r["method"] == "cmm"}
    assert got == {("aaaa1111", "60.0"), ("bbbb2222", "90.0")}
    assert "cmm [aaaa1111]" in Path(out["markdown"]).read_text()


def test_what_cannot_be_trusted_is_left_out_and_listed(tmp_path):
    runs = tmp_path / "runs"
    good = run(runs, "a", "cmm", 1, 1, 60.0)
    run(runs, "a", "cmm", 1, 2, 150.0)  # not an accuracy
    bad = run(runs, "a", "gda", 1, 1, 60.0)
    (bad / "result.json").write_text("{not json")
    run(runs, "a", "tip-adapter", 1, 1, 55.0, shared_fits="yes")
    shutil.copytree(good, runs / "copies" / "shot_1-seed_1")  # the same run twice
    recs, left = rp.load_runs([runs])
    assert [(r.method, r.seed) for r in recs] == [("cmm", 1)]
    why = " | ".join(f"{d['path']}: {d['error']}" for d in left)
    assert "cmm-k1/shot_1-seed_2/result.json: " in why and "'test_acc' is 150.0, not a percentage" in why
    assert "gda-k1/shot_1-seed_1/result.json: JSONDecodeError" in why
    assert "tip-adapter-k1/shot_1-seed_1/result.json: shared_fits is not a list" in why
    assert f"the same run as {good}" in why and len(left) == 4
    md = Path(rp.report([runs], tmp_path / "out", plot=False)["markdown"]).read_text()
    assert "### Left out" in md and "150.0" in md
    with pytest.raises(CmmError, match="No run"):
        rp.report([tmp_path / "nothing"], tmp_path / "o2")


def test_tables_2_3_4_and_6_where_their_runs_exist(tmp_path):
    for b, vals in (("rn50", (60.0, 62.0)), ("vit-b-16", (70.0, 74.0))):
        for s, v in zip((1, 2), vals):
            d = run(tmp_path, "imagenet", "cmm", 16, s, v, backbone=b)
            run(tmp_path, "imagenet", "cmm-no-map", 16, s, v - 5, backbone=b)
            if b == "rn50":
                (d / "evals").mkdir()
                doc = {"schema": "cmm-eval/1", "run_id": f"imagenet-cmm-k1-16-{s}", "test_acc": 50.0 + s}
                (d / "evals" / "imagenetv2.json").write_text(json.dumps({**doc, "dataset_resolved": "imagenetv2"}))
                stale = {**doc, "run_id": "another", "dataset_resolved": "imagenet_sketch"}
                (d / "evals" / "imagenet_sketch.json").write_text(json.dumps(stale))
    run(
        tmp_path,
        "imagenet",
        "cross-modal-wise-ft",
        16,
        1,
        61.0,
        fit=0.5,
        shared_fits=[{"name": "cross-modal-linear-grid", "reused": True, "seconds": 20.0}],
    )
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    t2 = {(r["method"], r["backbone"]): r for r in rows(out["csv"]["table2"])}
    assert float(t2["cmm", "vit-b-16"]["mean"]) == 72.0 and float(t2["cmm", "vit-b-16"]["std"]) == pytest.approx(
        2.8284, abs=1e-4
    )
    t3 = rows(out["csv"]["table3"])
    assert [(r["method"], r["target"], float(r["mean"])) for r in t3] == [("cmm", "imagenetv2", 51.5)]
    assert any("belongs to another run" in d["error"] for d in out["left_out"])  # the stale sketch evaluation
    t4 = {(r["backbone"], r["method"]): r for r in rows(out["csv"]["table4"])}
    assert float(t4["rn50", "cross-modal-wise-ft"]["alone_seconds_mean"]) == 20.5
    assert t4["rn50", "cmm"]["devices"] == "cpu"
    t6 = {(r["method"], r["shots"]): float(r["mean"]) for r in rows(out["csv"]["table6-rn50"])}
    assert t6 == {("cmm", "16"): 61.0, ("cmm-no-map", "16"): 56.0}


def test_published_numbers_beside_ours_where_comparable(tmp_path):
    vals = {d: 60.0 + i for i, d in enumerate(ELEVEN)}
    for d, v in vals.items():
        run(tmp_path, d, "cmm", 1, 1, v)
        run(tmp_path, d, "cmm", 16, 1, v + 10)
    run(tmp_path, "dtd", "gda", 16, 1, 70.0)
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    pub = rows(out["csv"]["published"])
    cmm = {int(r["shots"]): r for r in pub if r["method"] == "cmm"}
    ours1 = statistics.fmean(vals.values())
    assert float(cmm[1]["theirs"]) == 65.45 and float(cmm[1]["ours"]) == pytest.approx(ours1, abs=1e-4)
    assert float(cmm[1]["difference"]) == pytest.approx(ours1 - 65.45, abs=1e-4)
    assert float(cmm[16]["ours"]) == pytest.approx(ours1 + 10, abs=1e-4) and float(cmm[16]["theirs"]) == 77.56
    gda = [r for r in pub if r["method"] == "gda"]
    assert {r["dataset"] for r in gda} == {"dtd"}  # per-dataset figures only of our datasets
    g16 = [r for r in gda if r["shots"] == "16"][0]
    assert g16["selection"] == "full-val" and float(g16["difference"]) == pytest.approx(70.0 - float(g16["theirs"]))
    others = {r["method"] for r in rows(out["csv"]["published_other"])}
    assert {"cross-modal-partial-ft", "cross-modal-adapter", "prolip"} <= others and "cmm" not in others
    # On 10 of the 11 datasets the average is not comparable, and the report says why.
    shutil.rmtree(tmp_path / "eurosat")
    pub = rows(rp.report([tmp_path], tmp_path / "out2", plot=False)["csv"]["published"])
    c1 = [r for r in pub if r["method"] == "cmm" and r["shots"] == "1"][0]
    assert c1["ours"] == "" and "covers 10 of their 11 datasets" in c1["why_no_ours"] and "eurosat" in c1["why_no_ours"]


def test_names_from_data_are_escaped(tmp_path):
    run(tmp_path, "a<b>|c", "cmm", 1, 1, 60.0)
    out = rp.report([tmp_path], tmp_path / "out", plot=False)
    page = Path(out["html"]).read_text()
    assert "a<b>" not in page and "a&lt;b&gt;|c" in page
    assert "a<b>\\|c" in Path(out["markdown"]).read_text()


def test_output_and_matplotlib_are_checked_before_work(tmp_path, monkeypatch):
    run(tmp_path / "runs", "a", "cmm", 1, 1, 60.0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CmmError, match="is not a folder"):
        rp.report([tmp_path / "runs"], tmp_path / "file")
    monkeypatch.setattr(rp, "plotting_available", lambda: False)
    with pytest.raises(CmmError, match="matplotlib"):
        rp.check_report_target(tmp_path / "out")
    out = rp.report([tmp_path / "runs"], tmp_path / "out", plot=False)  # one dataset, one method: fine
    assert out["png"] == [] and Path(out["html"]).is_file()


def test_plot_has_a_panel_per_dataset_and_the_average(tmp_path):
    for d in ("a", "b"):
        for k in (1, 2):
            for s in (1, 2):
                run(tmp_path, d, "cmm", k, s, 50.0 + k + s)
    rep = rp.build_report([tmp_path])
    (fig,) = rep.figures
    assert [p["title"] for p in fig["panels"]] == ["a", "b", "average of 2 datasets"]
    assert fig["panels"][0]["zero_shot"] == 50.0
    assert fig["panels"][2]["series"][0]["points"] == [
        (1, 52.5, pytest.approx(0.7071, abs=1e-4)),
        (2, 53.5, pytest.approx(0.7071, abs=1e-4)),
    ]
    png = rp.draw_figure(fig)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
