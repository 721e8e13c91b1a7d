"""What a method declares for runners: its needs (checked before training), the results it shares with other
methods of one subset (SharedFits), its expected cost and its precheck."""

import pytest
from support.synth import make_cache
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.methods.base import Method, SharedFits, fit_data, unmet_needs
from cmm_cache.methods.registry import discover, get_method, registered_methods


def test_shared_fits_compute_once_per_name_and_dependencies():
    store, calls = SharedFits(), []

    def compute(tag):
        return lambda: calls.append(tag) or tag

    assert store.get("grid", {"lr": [1e-3], "n": 1}, compute("a")) == "a"
    assert store.get("grid", {"n": 1, "lr": [1e-3]}, compute("b")) == "a"  # same dependencies, any key order
    assert store.get("grid", {"lr": [1e-4], "n": 1}, compute("c")) == "c"  # other options: computed again
    assert store.get("other", {"lr": [1e-3], "n": 1}, compute("d")) == "d"
    assert calls == ["a", "c", "d"]
    assert [e["reused"] for e in store.take_log()] == [False, True, False, False] and store.take_log() == []


def test_fit_data_without_a_store_just_computes(tmp_path):
    path, _ = make_cache(tmp_path / "c.h5", C=3, d=8, shots=(1,), seeds=(1,))
    data, calls = fit_data(open_cache(path), 1, 1), []
    for _ in range(2):
        data.shared("x", {}, lambda: calls.append(1))
    assert len(calls) == 2


def test_unmet_needs_name_what_is_missing_and_the_command(tmp_path):
    plain, _ = make_cache(tmp_path / "plain.h5", C=3, d=8, shots=(1,), seeds=(1,))
    texts = make_text_cache(tmp_path / "texts.h5", shots=(1,), seeds=(1,))
    lp = get_method("cross-modal-lp")
    (u,) = unmet_needs(lp, open_cache(plain))
    assert u.need == "per_template_text" and "cross-modal-lp needs" in u.message
    assert u.command == f"cmm-cache extract --dataset synth --backbone synth-bb --out {plain} --add-text"
    assert unmet_needs(lp, open_cache(texts)) == []
    views = Method("v", fit=None, defaults={}, summary="", source="", needs=("views:2",))
    assert unmet_needs(views, open_cache(plain)) == []  # the synthetic train split has center + hflip
    (u,) = unmet_needs(
        Method("v4", fit=None, defaults={}, summary="", source="", needs=("views:4",)), open_cache(plain)
    )
    assert "4 train views per image (it holds 2: center, hflip)" in u.message
    assert u.command == f"cmm-cache extract --dataset synth --backbone synth-bb --out {plain} --add-views 4"
    pft = get_method("cross-modal-partial-ft")  # its `inputs` is one of its needs: every runner checks it alike
    blocks = make_text_cache(tmp_path / "blocks.h5", shots=(1,), seeds=(1,), blocks=True)
    (u,) = unmet_needs(pft, open_cache(texts))
    assert u.need == "block_inputs" and "lacks block inputs for train, val, test" in u.message
    assert (
        u.command == f"cmm-cache extract --dataset synth --backbone synth-bb --out {texts} --finetune-blocks 1 --force"
    )
    assert unmet_needs(pft, open_cache(blocks)) == []
    with pytest.raises(ValueError, match="unknown need"):
        unmet_needs(Method("bad", fit=None, defaults={}, summary="", source="", needs=("wings",)), open_cache(plain))


@pytest.mark.parametrize("name", registered_methods())
def test_every_method_declares_what_runners_use(name, tmp_path):
    m = discover()[name]
    assert m.cost > 0 and m.expected_cost() == pytest.approx(m.cost)
    if m.budget:
        half = m.defaults[m.budget] // 2 if m.defaults.get(m.budget) else None
        if half:
            assert m.expected_cost({m.budget: half}) == pytest.approx(m.cost * half / m.defaults[m.budget], rel=1e-3)
    for need in m.needs:
        assert str(need).partition(":")[0] in ("per_template_text", "views")
    if m.precheck is not None:  # a precheck accepts the method's defaults on an ordinary subset
        path = make_text_cache(tmp_path / "t.h5", shots=(4,), seeds=(1,))
        m.precheck(fit_data(open_cache(path), 4, 1), m.resolve({}))


def test_precheck_refuses_what_the_trainer_would(tmp_path):
    path = make_text_cache(tmp_path / "t.h5", shots=(1,), seeds=(1,))
    data = fit_data(open_cache(path), 1, 1)
    with pytest.raises(CmmError, match="No batch size"):
        get_method("cross-modal-lp").precheck(data, get_method("cross-modal-lp").resolve({"batch_size": [512]}))
    with pytest.raises(CmmError, match="fusion"):
        get_method("cmm").precheck(data, get_method("cmm").resolve({"fusion": "sum"}))
