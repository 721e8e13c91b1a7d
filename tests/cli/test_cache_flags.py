"""`--cache` with `--dataset`/`--backbone` that disagree with it is refused (fit and compare), never ignored;
flags that name the same cache are fine. A run folder holding another run is never written over silently."""

import pytest
from click.testing import CliRunner
from cmm_cache.cli.main import main
from support.synth import make_cache

from cmm_cache.util.paths import runs_dir


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cache(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=4, d=8, shots=(1,), seeds=(1,))  # dataset synth, backbone synth-bb
    return path


@pytest.mark.parametrize("command", [["fit", "--iterations", "30"], ["compare", "--methods", "zero-shot"]])
def test_a_backbone_or_dataset_that_disagrees_with_the_cache_is_refused(cache, command):
    r = _cli([*command, "--cache", cache, "--backbone", "tiny"])
    assert r.exit_code == 2, r.output
    assert f"--cache {cache} was extracted with backbone synth-bb, not --backbone tiny." in " ".join(r.output.split())
    r = _cli([*command, "--cache", cache, "--dataset", "dtd", "--backbone", "synth-bb"])
    assert r.exit_code == 2 and "holds dataset synth, not --dataset dtd" in r.output
    assert "Pass --cache alone" in r.output
    assert not runs_dir().exists()  # nothing was fitted


@pytest.mark.parametrize("command", [["fit", "--iterations", "30"], ["compare", "--methods", "zero-shot"]])
def test_flags_that_name_the_cache_are_accepted(cache, command):
    r = _cli([*command, "--cache", cache, "--dataset", "synth", "--backbone", "SYNTH-BB"])
    assert r.exit_code == 0, r.output


def test_another_backbones_run_in_out_is_refused_without_force(tmp_path, cache):
    """The overwrite of the report: a 1-shot fit of another cache into the folder of an existing run."""
    other, _ = make_cache(tmp_path / "o.h5", C=4, d=8, shots=(1,), seeds=(1,), backbone="other-bb")
    assert _cli(["fit", "--cache", cache, "--out", tmp_path / "run", "--iterations", "30"]).exit_code == 0
    r = _cli(["fit", "--cache", other, "--out", tmp_path / "run", "--iterations", "30"])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "holds another run" in said and "backbone: 'synth-bb' vs 'other-bb'" in said
    assert "--force" in said
    assert _cli(["fit", "--cache", other, "--out", tmp_path / "run", "--iterations", "30", "--force"]).exit_code == 0
