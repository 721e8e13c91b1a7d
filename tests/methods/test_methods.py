"""Every registered method: its head's contract, val-only selection, the registry itself."""

import sys

import numpy as np
import pytest
import torch
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.errors import CmmError
from cmm_cache.heads.base import HEADS, load_head, normalize_rows
from cmm_cache.methods.base import fit_data
from cmm_cache.methods.registry import get_method, registered_methods
from cmm_cache.runs.protocol import fit_run

METHODS = registered_methods()
CAP = 60  # optimizer steps per training: these tests check plumbing and selection, not accuracy


# The methods the paper's comparison needs; the registry may hold more (it finds them by itself).
REQUIRED = {
    "zero-shot",
    "linear-probe",
    "wise-ft",
    "cross-modal-lp",
    "cross-modal-wise-ft",
    "tip-adapter",
    "tip-adapter-f",
    "gda",
    "prolip-linear",
    "cross-modal-partial-ft",
    "cross-modal-adapter",
    "lp++",
    "clap",
    "cmm",
    "cmm-no-map",
    "cmm-no-triplet",
    "cmm-logits-only",
}


def test_the_registry_holds_the_papers_methods_baselines_first():
    assert REQUIRED <= set(METHODS)
    ranks = [get_method(n).rank for n in METHODS]
    assert ranks == sorted(ranks) and METHODS[0] == "zero-shot" and METHODS.index("cmm") > METHODS.index("gda")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_declares_its_contract(name):
    m = get_method(name)
    assert m.summary and m.source and m.selection and m.resolve({}) == m.defaults
    assert m.budget is None or m.budget in m.defaults  # what `--max-iterations` caps is one of its options
    assert (m.budget is not None) == m.trained
    with pytest.raises(CmmError, match="no option"):
        m.resolve({"no-such-option": 1})


def test_a_new_method_is_one_new_file(tmp_path, monkeypatch):
    """Discovery: a module dropped into the package is found, with no list to edit anywhere."""
    import cmm_cache.methods as package
    from cmm_cache.methods import registry

    (tmp_path / "toy_method.py").write_text(
        "from cmm_cache.evaluation.metrics import head_accuracy\n"
        "from cmm_cache.heads.zero_shot import ZeroShotHead\n"
        "from cmm_cache.methods.base import Method, MethodResult\n"
        "from cmm_cache.methods.registry import register_method\n"
        "def fit(data, options, progress=None):\n"
        "    head = ZeroShotHead(data.T0)\n"
        "    return MethodResult(head, {}, head_accuracy(head, data.x_val, data.y_val), 0.0)\n"
        "register_method(Method('toy', fit, {'steps': 5}, 'a toy', 'this test', trained=True, budget='steps'))\n"
    )
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    monkeypatch.delitem(sys.modules, "cmm_cache.methods.toy_method", raising=False)
    assert "toy" in registry.registered_methods()
    assert registry.get_method("toy").capped({}, 3) == {"steps": 3}


def test_a_broken_method_module_fails_loudly_with_its_own_error(tmp_path, monkeypatch):
    import cmm_cache.methods as package
    from cmm_cache.methods import registry

    (tmp_path / "broken_method.py").write_text("import no_such_package_for_cmm_cache_tests\n")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    with pytest.raises(ModuleNotFoundError, match="no_such_package_for_cmm_cache_tests"):
        registry.get_method("cmm")


def test_cmm_ablations_are_cmm_with_one_option_changed():
    base = get_method("cmm").defaults
    for name, key, value in [("cmm-no-map", "use_map", False), ("cmm-no-triplet", "triplet", False),
                             ("cmm-logits-only", "cmm_only", True)]:  # fmt: skip
        d = get_method(name).defaults
        assert d[key] == value and base[key] != value
        assert {k: v for k, v in d.items() if k != key} == {k: v for k, v in base.items() if k != key}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    a = open_cache(make_text_cache(root / "a.h5", blocks=True))  # block inputs too: every method runs on it
    b = open_cache(make_text_cache(root / "b.h5", scramble_test=True, blocks=True))
    return a, b


@pytest.fixture(scope="module")
def fitted(caches):
    """Every method fitted once on the 4-shot subset (seed 1): name -> MethodResult."""
    data = fit_data(caches[0], 4, 1)
    out = {}
    for name in METHODS:
        m = get_method(name)
        out[name] = m.fit(data, m.resolve(m.capped({}, CAP)))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_head_probs_state_export_and_class_restriction(name, fitted):
    head = fitted[name].head
    g = torch.Generator().manual_seed(3)
    blocks = head.input == "block_inputs"  # a head that runs the tower's last blocks takes their inputs
    x = torch.randn(9, *head.input_shape, generator=g) if blocks else normalize_rows(torch.randn(9, 16, generator=g))
    p = head.probs(x)
    torch.testing.assert_close(p.sum(1), torch.ones(9))
    assert torch.equal(p.argmax(1), head.logits(x).argmax(1))
    arrays, params = head.state()
    again = load_head(head.kind, arrays, params)
    assert type(again) is type(head)
    torch.testing.assert_close(again.probs(x), p)
    exported = torch.export.export(head.module(), (x,)).module()
    if blocks:
        torch.testing.assert_close(exported(x), p, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(exported(2.5 * x), p, rtol=1e-4, atol=1e-5)  # the module normalizes its input
    sub = torch.tensor([3, 0, 5])
    z = head.logits(x, sub)
    assert z.shape == (9, 3)
    if head.kind != "cmm":  # per-class scores: restricting is selecting columns (CMM fuses softmaxes instead)
        ref = head.logits(x)[:, sub]
        torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    torch.testing.assert_close(head.probs(x, sub).sum(1), torch.ones(9))
    assert head.kind in HEADS and head.num_classes == 6


@pytest.mark.parametrize("name", METHODS)
def test_selection_sees_val_only_scrambled_test_labels_change_nothing(name, caches):
    """Fit through fit_run on two caches that differ only in their test labels: everything chosen,
    every weight and the val accuracy are identical; only the test accuracy may move."""
    a, b = caches
    assert not np.array_equal(a.split("test").labels, b.split("test").labels)
    m = get_method(name)
    opts = m.capped({}, CAP)
    ra, wa = fit_run(a, 4, 2, method=name, options=opts)
    rb, wb = fit_run(b, 4, 2, method=name, options=opts)
    assert ra["hparams"] == rb["hparams"] and ra["val_acc"] == rb["val_acc"]
    assert ra["head"] == rb["head"] and sorted(wa) == sorted(wb)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    assert ra["method"] == name and set(ra["config"]) >= set(m.defaults)


def test_methods_that_need_per_template_text_say_how_to_get_it(tmp_path):
    from support.synth import make_cache

    c = open_cache(make_cache(tmp_path / "old.h5", C=4, d=8, shots=(1,), seeds=(1,))[0])  # no per-template node
    with pytest.raises(CmmError, match="--add-text"):
        fit_run(c, 1, 1, method="cross-modal-lp", options={"iterations": 5})


def test_methods_on_block_inputs_need_a_cache_with_them(tmp_path):
    from cmm_cache.runs.compare import compare

    c = open_cache(make_text_cache(tmp_path / "plain.h5"))
    with pytest.raises(CmmError, match="--finetune-blocks"):
        fit_run(c, 1, 1, method="cross-modal-partial-ft", options={"iterations": 5})
    with pytest.raises(CmmError, match="--finetune-blocks"):
        compare(c, "zero-shot,cross-modal-partial-ft", [1], [1])
    out = compare(c, "all", [1], [1], max_iterations=5)
    assert "cross-modal-partial-ft" in out["not_run"] and "cross-modal-partial-ft" not in out["methods"]
    assert {"lp++", "clap", "cross-modal-adapter"} <= set(out["methods"])


def test_capped_caps_each_kind_of_budget():
    assert get_method("cmm").capped({}, 100)["iterations"] == 100
    assert get_method("cmm").capped({"iterations": 50}, 100)["iterations"] == 50
    assert get_method("tip-adapter-f").capped({}, 7)["max_iterations"] == 7
    assert get_method("prolip-linear").capped({}, 9)["epochs"] == 9
    assert get_method("gda").capped({"alpha": 1.0}, 9) == {"alpha": 1.0}
    assert get_method("cross-modal-lp").capped({}, None) == {}


def test_a_saved_run_of_any_method_loads_in_a_fresh_process(tmp_path, caches):
    """load_run must find every head kind without the caller importing the method registry first."""
    import subprocess

    from cmm_cache.runs.compare import fit_one

    opts = {"gda": {}, "prolip-linear": {"epochs": 5}, "tip-adapter": {}}
    rows = [fit_one(caches[0], name, 1, 1, o, tmp_path) for name, o in opts.items()]
    code = (
        "import sys; from cmm_cache.heads.run_folder import load_run\n"
        "print([load_run(p).head.kind for p in sys.argv[1:]])"
    )
    out = subprocess.run([sys.executable, "-c", code, *[r["run"] for r in rows]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['linear', 'linear-map', 'tip-adapter']"


def test_the_readme_methods_table_lists_every_method_with_its_source_and_selection():
    """The README's table says what `cmm-cache methods` prints: one row per registered method, with the
    registry's summary, selection rule, train views and source."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(METHODS), "README methods table and registry differ"
    for name in METHODS:
        m = get_method(name)
        _, summary, selection, views, source = rows[name]
        assert (summary, selection, source) == (m.summary, m.selection, m.source), name
        assert views.startswith(f"`{m.views}`"), name
