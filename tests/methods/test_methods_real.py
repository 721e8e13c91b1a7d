"""Every method on real CLIP ViT-B/32 features (OxfordPets), with simulated text (see tests/support/text_cache.py).

Asserted are only orderings the literature reports and that hold here for every seed:
more shots help every few-shot method; the methods built on the zero-shot classifier do not
fall below it (Tip-Adapter, GDA, WiSE-FT, CMM, ProLIP, LP++, CLAP and cross-modal probing and the
cross-modal adapter all report so);
cross-modal linear probing beats the image-only linear probe at 1 shot (Lin et al., CVPR 2023),
and so does the text-initialized WiSE-FT probe; Tip-Adapter-F beats Tip-Adapter and GDA beats
Tip-Adapter at 16 shots (their papers' tables). The 1-shot subsets vary with the seed; at 16 shots
the folder holds exactly 16 images per class, so one seed covers it.

Trained methods run on shortened schedules (the orderings above hold from early on); their full
schedules are exercised by `cmm-cache compare`.
"""

import time

import pytest
from support.text_cache import REAL_SKIP_REASON, convert_real, real_folder

from cmm_cache.cache.reader import open_cache
from cmm_cache.methods.registry import get_method, registered_methods
from cmm_cache.runs.protocol import fit_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(real_folder("oxford_pets") is None, reason=REAL_SKIP_REASON),
]

RUNS = [(1, 1), (1, 2), (1, 3), (16, 1)]
# Every method that trains on final features (a feature cache has no block inputs for partial finetuning).
METHODS = [n for n in registered_methods() if get_method(n).inputs == "features"]
BUILT_ON_ZERO_SHOT = [
    "wise-ft",
    "cross-modal-lp",
    "cross-modal-wise-ft",
    "cross-modal-adapter",
    "lp++",
    "clap",
    "tip-adapter",
    "tip-adapter-f",
    "gda",
    "prolip-linear",
    "cmm",
    "cmm-no-map",
    "cmm-no-triplet",
]


def _options(name):
    if name.startswith("cmm"):
        return {"iterations": 1000, "lr": 2e-3}
    if name == "cross-modal-adapter":  # its lrs (at most 1e-4) barely move the head in 200 steps
        return {"iterations": 2000}
    return get_method(name).capped({}, 60 if name == "prolip-linear" else 200)


@pytest.fixture(scope="module")
def acc(tmp_path_factory):
    cache = open_cache(convert_real(real_folder("oxford_pets"), tmp_path_factory.mktemp("real") / "pets.h5"))
    out = {}
    for name in METHODS:
        t = time.perf_counter()
        for k, s in RUNS:
            out[name, k, s] = fit_run(cache, k, s, method=name, options=_options(name))[0]["test_acc"]
        print(f"{name}: {time.perf_counter() - t:.1f} s, {[out[name, k, s] for k, s in RUNS]}")
    return out


def test_simulated_text_is_a_usable_but_imperfect_zero_shot_classifier(acc):
    assert 40 < acc["zero-shot", 1, 1] < 80


def test_more_shots_help_every_few_shot_method(acc):
    for name in METHODS:
        if name != "zero-shot":
            assert all(acc[name, 16, 1] > acc[name, 1, s] for s in (1, 2, 3)), name


def test_methods_built_on_zero_shot_do_not_fall_below_it(acc):
    for name in BUILT_ON_ZERO_SHOT:
        for k, s in RUNS:
            assert acc[name, k, s] >= acc["zero-shot", k, s] - 0.5, (name, k, s)
        assert acc[name, 16, 1] > acc["zero-shot", 16, 1] + 5, name


def test_text_helps_the_linear_probe_at_one_shot(acc):
    for s in (1, 2, 3):
        assert acc["cross-modal-lp", 1, s] >= acc["linear-probe", 1, s], s
        assert acc["wise-ft", 1, s] >= acc["linear-probe", 1, s], s


def test_published_orderings_at_sixteen_shots(acc):
    assert acc["tip-adapter-f", 16, 1] >= acc["tip-adapter", 16, 1]
    assert acc["gda", 16, 1] >= acc["tip-adapter", 16, 1]
