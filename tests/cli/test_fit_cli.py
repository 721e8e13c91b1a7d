"""`cmm-cache fit`, `eval`, `results merge`, `bench fit` as a user runs them."""

import json
import re

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.figures import is_figure
from support.synth import World, make_cache, make_shift_cache

from cmm_cache.cache.locate import cache_path, record_last_extract
from cmm_cache.util.paths import runs_dir

FAST = ["--iterations", "60"]


def _run(args, ok=True):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output + (r.stderr if hasattr(r, "stderr") else "")
    return r


def _json(r):
    out = r.stdout if hasattr(r, "stdout") else r.output
    return json.loads(out)


def test_fit_cache_file_several_runs_json(tmp_path):
    path, _ = make_cache(tmp_path / "any" / "where.h5", C=5, d=12, shots=(1, 2), seeds=(1, 2))
    r = _run(["fit", "--cache", str(path), "--shots", "1,2", "--seeds", "1,2", "--json", *FAST])
    out = _json(r)
    assert [(x["shots"], x["seed"]) for x in out["runs"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [s["shots"] for s in out["summary"]] == [1, 2] and out["summary"][0]["runs"] == 2
    key = out["runs"][2]["config_key"]
    assert len({r["config_key"] for r in out["runs"]}) == 1 and re.fullmatch("[0-9a-f]{8}", key)
    run = runs_dir() / "synth" / "synth-bb" / f"cmm-{key}" / "shot_2-seed_1"
    assert out["runs"][2]["run"] == str(run)
    assert json.loads((run / "result.json").read_text())["test_acc"] == out["runs"][2]["test_acc"]
    assert out["runs"][0]["config"]["iterations"] == 60


def test_fit_single_run_json_is_the_result_object(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(2,), seeds=(1,))
    out = _json(
        _run(
            [
                "fit",
                "--cache",
                str(path),
                "--shots",
                "2",
                "--seed",
                "1",
                "--json",
                "--out",
                str(tmp_path / "r"),
                "--no-triplet",
                "--fusion",
                "logit",
                "--normalize-T-in-s",
                "--alpha",
                "0.5",
                *FAST,
            ]
        )
    )
    assert out["alpha"] == 0.5 and out["config"]["triplet"] is False and out["config"]["fusion"] == "logit"
    assert out["config"]["normalize_T_in_s"] is True
    assert (tmp_path / "r" / "weights.npz").is_file()


def test_fit_without_any_cache_says_extract_first():
    r = _run(["fit", "--shots", "4"], ok=False)
    assert r.exit_code == 2 and "cmm-cache extract" in r.output


def test_fit_uses_last_extract_and_says_which(tmp_path):
    path, _ = make_cache(cache_path("synth", "synth-bb"), C=4, d=8, shots=(2,), seeds=(1,))
    record_last_extract("synth", "synth-bb", path)
    r = _run(["fit", *FAST])
    assert "extracted last" in r.output and "synth" in r.output
    assert len(list((runs_dir() / "synth" / "synth-bb").glob("cmm-*/shot_2-seed_1/result.json"))) == 1
    _run(["fit", "--dataset", "synth", "--backbone", "synth-bb", *FAST])
    # eval with no arguments: the last extract's dataset/backbone, the largest K fitted with seed 1
    assert _json(_run(["eval", "--json"]))["shots"] == 2


def test_fit_missing_fewshot_group_is_refused_before_training(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(2,), seeds=(1,))
    r = _run(["fit", "--cache", str(path), "--shots", "16"], ok=False)
    assert r.exit_code == 2 and "16-shot/seed 1" in r.output
    assert not runs_dir().exists()


def test_eval_reproduces_the_fit_and_refuses_a_reextracted_cache(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=5, d=12, shots=(2,), seeds=(1,))
    fitted = _json(_run(["fit", "--cache", str(path), "--json", *FAST]))
    again = _json(_run(["eval", "--run", fitted["run"], "--json"]))
    assert again["test_acc"] == fitted["test_acc"] and again["alpha"] == fitted["alpha"]
    # Extracted again from the same inputs (only the time of extraction differs): the run stays valid.
    make_cache(path, C=5, d=12, shots=(2,), seeds=(1,), provenance={"created": "later"})
    assert _json(_run(["eval", "--run", fitted["run"], "--json"]))["fitted_on_this_cache"] is True
    # Extracted from other weights: refused.
    make_cache(path, C=5, d=12, shots=(2,), seeds=(1,), provenance={"weights_sha256": "0" * 64})
    r = _run(["eval", "--run", fitted["run"]], ok=False)
    assert r.exit_code == 2 and "its content differs" in " ".join(r.output.split())


def _imagenet_like(tmp_path):
    world = World(C=20, d=16, seed=3)
    make_cache(
        cache_path("imagenet", "bb"),
        dataset="imagenet",
        backbone="bb",
        world=world,
        shots=(16,),
        seeds=(1,),
        train_per_class=16,
        wnids=True,
    )
    _run(["fit", "--dataset", "imagenet", "--backbone", "bb", *FAST])
    return world


def test_eval_shift_scores_only_the_shift_classes(tmp_path):
    world = _imagenet_like(tmp_path)
    subset = [2, 5, 7, 11, 19]
    make_shift_cache(cache_path("imagenet-a", "bb"), world, subset, backbone="bb", dataset="imagenet-a")
    out = _json(_run(["eval", "--shift", "imagenet-a", "--json"]))
    assert out["classes_scored"] == 5 and out["num_test"] == 5 * 30 and out["dataset"] == "imagenet-a"
    assert out["shots"] == 16 and out["seed"] == 1
    assert out["zero_shot_test_acc"] > 20  # chance over the 5 scored classes is 20 %


def test_eval_shift_refuses_another_backbone_or_class_space(tmp_path):
    world = _imagenet_like(tmp_path)
    make_shift_cache(
        cache_path("imagenet-sketch", "bb"), world, [1, 2], backbone="bb", provenance={"model": "RN101-quickgelu"}
    )
    r = _run(["eval", "--shift", "imagenet-sketch"], ok=False)
    assert r.exit_code == 2 and "another backbone" in r.output
    make_shift_cache(cache_path("imagenet-r", "bb"), world, [1, 2], backbone="bb", wnids=["n00000001", "n99999999"])
    r = _run(["eval", "--shift", "imagenet-r"], ok=False)
    assert r.exit_code == 2 and "WordNet" in r.output
    r = _run(["eval", "--shift", "imagenet-v2"], ok=False)
    assert r.exit_code == 2 and "No cache of dataset 'imagenet-v2'" in r.output and "cmm-cache extract" in r.output


def test_results_merge_csv(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1, 2))
    _run(["fit", "--cache", str(path), *FAST])
    out = _json(_run(["results", "merge", str(runs_dir()), "--csv", str(tmp_path / "all.csv"), "--json"]))
    assert len(out["runs"]) == 2 and out["summary"][0]["runs"] == 2
    assert len((tmp_path / "all.csv").read_text().strip().splitlines()) == 3


def test_bench_fit_reports_seconds_and_iterations_per_second():
    out = _json(
        _run(
            [
                "bench",
                "fit",
                "--classes",
                "5",
                "--dim",
                "16",
                "--shots",
                "2",
                "--iterations",
                "30",
                "--test-size",
                "100",
                "--reference",
                "--device",
                "cpu",
                "--json",
            ]
        )
    )
    for k in ("fit_seconds", "iterations_per_second", "eval_seconds", "reference_seconds", "speedup"):
        assert is_figure(out[k]), k  # reported as a number; speed itself is the benchmark's business
    assert out["samples"] == 5 * 2 * 2


def test_bench_fit_defaults_to_16_shots():
    out = _json(
        _run(["bench", "fit", "--classes", "3", "--dim", "8", "--iterations", "5", "--test-size", "0", "--json"])
    )
    assert out["shots"] == 16 and out["samples"] == 3 * 16 * 2


@pytest.mark.slow
def test_tiny_pipeline_extract_then_fit():
    """The CI path: extract the tiny dataset with the tiny backbone, then `fit --shots 4`."""
    _run(["extract", "--dataset", "tiny", "--backbone", "tiny"])
    out = _json(_run(["fit", "--shots", "4", "--iterations", "300", "--json"]))
    assert [r["seed"] for r in out["runs"]] == [1, 2, 3]
    assert all(r["shots"] == 4 and r["dataset"] == "tiny" for r in out["runs"])


def test_eval_shift_without_any_imagenet_run_says_what_to_do():
    r = CliRunner().invoke(main, ["eval", "--shift", "imagenet-sketch"])
    assert r.exit_code == 2
    assert "No fitted run for imagenet" in r.output and "--shots 16" in r.output


def test_repeated_list_values_mean_one_run():
    from cmm_cache.cli.common import int_list

    assert int_list(None, None, "4,4,1,4") == [4, 1]


# ----------------------------------------------------------------------------
# Runs never overwrite each other; methods; finding runs


def test_two_fits_with_different_flags_leave_two_run_folders(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    a = _json(_run(["fit", "--cache", str(path), "--json", *FAST]))
    b = _json(_run(["fit", "--cache", str(path), "--json", "--no-map", *FAST]))
    r = _run(["fit", "--cache", str(path), "--json", *FAST])
    c = _json(r)
    assert a["run"] != b["run"] and c["run"] == a["run"] and c["skipped"] is True  # a rerun resumes, fits nothing
    assert "already fitted" in r.stderr
    f = _run(["fit", "--cache", str(path), "--json", "--force", *FAST])
    assert _json(f)["replaced"] is True and "replaced the run" in f.stderr
    assert len(list(runs_dir().rglob("result.json"))) == 2
    merged = _json(_run(["results", "merge", str(runs_dir()), "--json"]))
    assert len(merged["summary"]) == 2 and {s["config_key"] for s in merged["summary"]} == {
        a["config_key"],
        b["config_key"],
    }


def test_out_with_another_config_names_force_and_out(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    _run(["fit", "--cache", str(path), "--out", str(tmp_path / "r"), *FAST])
    r = _run(["fit", "--cache", str(path), "--out", str(tmp_path / "r"), "--no-triplet", *FAST], ok=False)
    assert r.exit_code == 2 and "holds another run (config key" in " ".join(r.output.split()) and "--force" in r.output
    _run(["fit", "--cache", str(path), "--out", str(tmp_path / "r"), "--no-triplet", "--force", *FAST])


def test_fit_method_and_set_options(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))
    zs = _json(_run(["fit", "--cache", str(path), "--method", "zero-shot", "--json"]))
    assert zs["method"] == "zero-shot" and zs["head"]["kind"] == "zero-shot" and zs["cmm_only_test_acc"] is None
    assert "/zero-shot-" in zs["run"]
    ev = _json(_run(["eval", "--run", zs["run"], "--json"]))
    assert ev["test_acc"] == zs["test_acc"] and ev["method"] == "zero-shot"
    via_set = _json(_run(["fit", "--cache", str(path), "--json", "--set", "iterations=60", "--set", "use_map=false"]))
    via_flags = _json(_run(["fit", "--cache", str(path), "--json", "--no-map", *FAST]))
    assert via_set["config_key"] == via_flags["config_key"] and via_set["config"]["use_map"] is False
    r = _run(["fit", "--cache", str(path), "--method", "zero-shot", "--no-map"], ok=False)
    assert r.exit_code == 2 and "--no-map is an option of cmm" in r.output and "--set" in r.output
    r = _run(["fit", "--cache", str(path), "--set", "iterations=60", *FAST], ok=False)
    assert r.exit_code == 2 and "both as a flag and with --set" in r.output
    r = _run(["fit", "--cache", str(path), "--method", "no-such"], ok=False)
    assert r.exit_code == 2 and "zero-shot" in r.output


def test_eval_shift_with_a_bad_name_lists_the_valid_ones():
    r = _run(["eval", "--shift", "imagenet-z"], ok=False)
    assert r.exit_code == 2 and "'imagenet-z' is not an ImageNet shift set" in r.output
    assert "imagenet-sketch" in r.output and "imagenet-a" in r.output


def test_eval_shift_takes_the_default_config_or_asks(tmp_path):
    world = _imagenet_like(tmp_path)  # one run: --iterations 60
    make_shift_cache(cache_path("imagenet-a", "bb"), world, [2, 5], backbone="bb", dataset="imagenet-a")
    _run(["eval", "--shift", "imagenet-a"])  # the only configuration
    _run(["fit", "--dataset", "imagenet", "--backbone", "bb", "--no-map", *FAST])
    r = _run(["eval", "--shift", "imagenet-a"], ok=False)
    assert r.exit_code == 2 and "Several configurations" in r.output and "use_map=False" in r.output
    assert "--run PATH" in r.output


def test_eval_on_another_cache_of_the_same_backbone_and_classes(tmp_path):
    path, world = make_cache(tmp_path / "c.h5", C=5, d=12, shots=(2,), seeds=(1,))
    fitted = _json(_run(["fit", "--cache", str(path), "--json", *FAST]))
    other, _ = make_cache(
        tmp_path / "new.h5", C=5, d=12, shots=(2,), seeds=(1,), seed=5, world=world, provenance={"note": "other data"}
    )
    out = _json(_run(["eval", "--run", fitted["run"], "--cache", str(other), "--json"]))
    assert out["fitted_on_this_cache"] is False and out["cache"] == str(other)
    few, _ = make_cache(tmp_path / "few.h5", C=4, d=12, shots=(2,), seeds=(1,), provenance={"created": "x"})
    r = _run(["eval", "--run", fitted["run"], "--cache", str(few)], ok=False)
    assert r.exit_code == 2 and "other classes" in r.output


def test_results_merge_skips_a_damaged_result_without_traceback(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1, 2))
    _run(["fit", "--cache", str(path), *FAST])
    bad = next(runs_dir().rglob("shot_1-seed_2")) / "result.json"
    bad.write_text('{"dataset": ')
    r = _run(["results", "merge", str(runs_dir()), "--json"])
    out = _json(r)
    assert len(out["runs"]) == 1 and out["damaged"][0]["path"] == str(bad)
    assert str(bad) in r.stderr.replace("\n", "") and "Traceback" not in r.output
