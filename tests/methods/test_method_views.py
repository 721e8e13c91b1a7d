"""Each method trains on the views its paper uses, records them, and says when the cache has too few."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.methods.base import fit_data, resolve_views, wanted_augmented
from cmm_cache.methods.gda import gda_classifier
from cmm_cache.methods.registry import get_method
from cmm_cache.methods.tip_adapter import cache_model
from cmm_cache.runs.protocol import fit_run, planned_identity

NAMES6 = ["center", "hflip", "rrc-1", "rrc-2", "rrc-3", "rrc-4"]


def test_resolve_views():
    r = resolve_views("center,hflip", NAMES6)
    assert r.names == ["center", "hflip"] and r.warnings == [] and not r.augmented
    r = resolve_views("rrc:3", NAMES6)
    assert r.names == ["rrc-1", "rrc-2", "rrc-3"] and r.warnings == [] and r.augmented
    r = resolve_views("rrc:10", NAMES6, "gda")
    assert (
        r.names == NAMES6[2:]
        and len(r.warnings) == 1
        and "holds 4" in r.warnings[0]
        and "--add-views 12" in r.warnings[0]
    )
    r = resolve_views("rrc:10", ["center", "hflip"], "gda")
    assert r.names == ["center", "hflip"] and "holds none" in r.warnings[0]
    assert resolve_views("rrc", NAMES6).names == NAMES6[2:]
    assert resolve_views("center,hflip", ["center"]).names == ["center"]  # another tool's cache: no mirror
    assert resolve_views("rrc-2,center", NAMES6).names == ["rrc-2", "center"]
    assert (wanted_augmented("center,hflip"), wanted_augmented("rrc:10"), wanted_augmented("rrc")) == (0, 10, None)
    from cmm_cache.errors import CmmError

    for bad in ("rrc:x", "rrc:0", " , "):
        with pytest.raises(CmmError, match="Bad train views"):
            resolve_views(bad, NAMES6)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    return open_cache(make_text_cache(root / "six.h5", views=6)), open_cache(make_text_cache(root / "two.h5"))


def test_fit_data_selects_views_by_name(caches):
    six = caches[0]
    data = fit_data(six, 4, 1)
    assert data.view_names == NAMES6 and data.views_per_image == 6
    sub = data.select_views(["rrc-2", "center"])
    assert sub.view_names == ["rrc-2", "center"] and sub.views_per_image == 2 and sub.num_images == data.num_images
    torch.testing.assert_close(sub.by_view()[0], data.by_view()[3])
    torch.testing.assert_close(sub.by_view()[1], data.by_view()[0])
    assert torch.equal(sub.train_image, torch.arange(data.num_images).repeat_interleave(2))
    raw = six.split("train").features[six.fewshot(4, 1)[0]].astype(np.float32)
    torch.testing.assert_close(
        data.x_train * data.train_norm[:, None], torch.from_numpy(raw.reshape(-1, raw.shape[-1]))
    )
    direct = fit_data(six, 4, 1, views=["rrc-2", "center"])
    torch.testing.assert_close(direct.x_train, sub.x_train)


def test_methods_declare_views_and_runs_record_them(caches):
    six, two = caches
    assert get_method("cmm").views == "center,hflip" and get_method("gda").views == "rrc:10"
    r, _ = fit_run(six, 4, 1, method="gda")
    assert r["train_views"] == NAMES6[2:] and r["config"]["train_views"] == NAMES6[2:]
    assert any("10 augmented views" in w for w in r["warnings"])
    r2, _ = fit_run(two, 4, 1, method="gda")
    assert r2["train_views"] == ["center", "hflip"] and "train_views" not in r2["config"]
    assert any("holds none" in w for w in r2["warnings"])
    # CMM uses the centre and mirror on either cache: the same config key (its runs keep their identity)
    c6, _ = fit_run(six, 4, 1, method="cmm", options={"iterations": 20})
    c2, _ = fit_run(two, 4, 1, method="cmm", options={"iterations": 20})
    assert c6["train_views"] == ["center", "hflip"] and c6["config_key"] == c2["config_key"] and not c6["warnings"]
    assert c6["num_train_samples"] == c2["num_train_samples"]
    # the user's choice enters the identity, and the planned identity is the fitted one
    u, _ = fit_run(six, 4, 1, method="gda", views="center,hflip")
    assert u["config"]["train_views"] == ["center", "hflip"] and u["config_key"] != r["config_key"]
    m = get_method("gda")
    assert planned_identity(six, m, m.resolve({}), None, 4, 1)["config_key"] == r["config_key"]
    assert planned_identity(six, m, m.resolve({}), None, 4, 1, "center,hflip")["config_key"] == u["config_key"]


def test_gda_estimates_from_the_augmented_views(caches):
    six = caches[0]
    data = fit_data(six, 4, 1)
    aug = data.select_views(NAMES6[2:])
    W, b = gda_classifier(aug.x_train, aug.y_train, data.num_classes)
    res = get_method("gda").fit(aug, get_method("gda").resolve({"alpha": 1.0}))
    torch.testing.assert_close(res.head.weight, 100.0 * data.T0 + W)
    torch.testing.assert_close(res.head.bias, b)


def test_tip_adapter_keys_are_the_mean_of_raw_augmented_features(caches):
    six = caches[0]
    rows = six.fewshot(4, 1)[0]
    raw = six.split("train").features[rows][:, 2:].astype(np.float64)  # rrc-1..4, raw
    want = torch.from_numpy(raw.mean(1))
    data = fit_data(six, 4, 1).select_views(NAMES6[2:])
    keys, labels = cache_model(data)
    torch.testing.assert_close(keys.double(), F.normalize(want, dim=-1), rtol=1e-5, atol=1e-6)
    assert torch.equal(labels, torch.from_numpy(six.split("train").labels[rows]))


def test_tip_adapter_f_trains_epoch_e_on_view_e_mod_v(caches, monkeypatch):
    """With augmented views each epoch sees one view of every image, cycling (their fresh augmentation)."""
    from cmm_cache.methods import tip_adapter as tip

    six = caches[0]
    data = fit_data(six, 4, 1).select_views(NAMES6[2:])
    seen = []
    orig = tip.tip_logits

    def spy(x, *a, **k):
        if x.data_ptr() != data.x_val.data_ptr():  # the training batches, not the per-epoch val scoring
            seen.append(x.detach().clone())
        return orig(x, *a, **k)

    monkeypatch.setattr(tip, "tip_logits", spy)
    m = get_method("tip-adapter-f")
    m.fit(data, m.resolve({"epochs": 5, "batch_size": 1000}))
    per_view = data.by_view()
    assert len(seen) == 5
    for e, x in enumerate(seen):  # one full batch per epoch: the rows of view e mod 4, shuffled
        rows = {tuple(r.tolist()) for r in x}
        assert rows == {tuple(r.tolist()) for r in per_view[e % 4]}


def test_fit_views_on_the_command_line(caches, tmp_path):
    import json

    from click.testing import CliRunner
    from cmm_cache.cli.main import main

    six = caches[0]
    args = [
        "fit",
        "--cache",
        str(six.path),
        "--shots",
        "4",
        "--seed",
        "1",
        "--method",
        "gda",
        "--runs-dir",
        str(tmp_path),
    ]
    r = CliRunner().invoke(main, [*args, "--views", "rrc:2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["train_views"] == ["rrc-1", "rrc-2"] and out["config"]["train_views"] == ["rrc-1", "rrc-2"]
    assert out["warnings"] == []
