"""Augmented train views: the recipe, seeded and reproducible views, `--train-views`, `--add-views`."""

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cmm_cache.cli.main import main

from cmm_cache.cache.reader import open_cache
from cmm_cache.cache.verify import verify_cache
from cmm_cache.errors import CmmError
from cmm_cache.extract.add_views import add_views
from cmm_cache.extract.encode import ViewMaker, ViewRecipe, augmented_names, rrc_params, view_rng
from cmm_cache.extract.pipeline import extract

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.extract import make_dataset  # noqa: E402

KW = dict(shots=[1, 2], seeds=[1], chunk_rows=4, batch_size=4, num_workers=0, record_last=False)


def test_view_names():
    assert augmented_names(2) == ["center", "hflip"]
    assert augmented_names(5) == ["center", "hflip", "rrc-1", "rrc-2", "rrc-3"]
    assert ViewRecipe(count=4).augmented == 2
    with pytest.raises(ValueError):
        ViewRecipe(count=4, crop_scale=(0.8, 0.5))


def test_rrc_params_follow_torchvisions_algorithm():
    """Over many draws: the crop lies inside the image, its area is a fraction in the scale range and its
    aspect ratio in the ratio range (up to rounding), as torchvision's RandomResizedCrop.get_params."""
    rng = np.random.default_rng(0)
    W, H = 200, 150
    fracs, ratios = [], []
    for _ in range(2000):
        i, j, h, w = rrc_params(W, H, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= i and 0 <= j and i + h <= H and j + w <= W and h > 0 and w > 0
        fracs.append(h * w / (H * W))
        ratios.append(w / h)
    fracs, ratios = np.array(fracs), np.array(ratios)
    assert fracs.min() >= 0.49 and fracs.max() <= 1.0 and 0.6 < fracs.mean() < 0.8
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35
    # an extreme image: every try fails, the fallback is the central crop of the clamped ratio
    i, j, h, w = rrc_params(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(1))
    assert (h, w) == (10, 13) and (i, j) == (0, (1000 - 13) // 2)


def test_an_augmented_view_is_crop_then_flip_then_the_backbones_tensor_steps():
    """The view equals torchvision's resized_crop (bicubic) + hflip + ToTensor + Normalize with the same draw,
    and depends only on (seed, row, view)."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision import transforms as T

    from cmm_cache.backbones.load import load_backbone

    bb = load_backbone("tiny")
    maker = ViewMaker(bb.preprocess, ViewRecipe(count=6, seed=3), bb.image_size)
    arr = np.random.default_rng(0).integers(0, 255, size=(47, 61, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    for view in (1, 2, 3, 4):
        got = maker(img, f"rrc-{view}", row=11)
        rng = view_rng(3, 11, view)
        i, j, h, w = rrc_params(61, 47, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        ref = TF.resized_crop(img, i, j, h, w, [32, 32], interpolation=T.InterpolationMode.BICUBIC)
        if rng.random() < 0.5:
            ref = TF.hflip(ref)
        ref = TF.normalize(TF.to_tensor(ref), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(maker(img, f"rrc-{view}", row=11), got)  # the same seed: the same view
    assert not torch.equal(maker(img, "rrc-1", row=11), maker(img, "rrc-1", row=12))
    torch.testing.assert_close(maker(img, "center", row=5), bb.preprocess(img))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("views-imgs")
    make_dataset(r)
    return r


@pytest.fixture(scope="module")
def four(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("four") / "four.h5"
    extract(make_dataset(root), "tiny", out=out, train_views=4, **KW)
    return out


def test_train_views_are_stored_named_with_their_recipe(four):
    c = open_cache(four)
    tr = c.split("train")
    assert tr.views == ["center", "hflip", "rrc-1", "rrc-2"] and tr.features.shape[1] == 4
    assert c.split("val").views == ["center"] and c.split("test").views == ["center"]
    rec = c.view_recipe()
    assert rec["crop_scale"] == [0.5, 1.0] and rec["seed"] == 0 and rec["count"] == 4 and rec["flip_p"] == 0.5
    assert c.provenance["train_views"]["names"] == tr.views and verify_cache(four) == []
    f = tr.features.astype(np.float32)
    assert not np.allclose(f[:, 2], f[:, 3]) and not np.allclose(f[:, 0], f[:, 2])


def test_views_are_seeded_and_reproducible(root, four, tmp_path):
    """Another batch size and chunking, and another few-shot plan (other train rows around each image): every
    view of every common image is the same; another seed changes the augmented views only."""
    again = tmp_path / "again.h5"
    extract(make_dataset(root), "tiny", out=again, train_views=4, **{**KW, "batch_size": 7, "chunk_rows": 3})
    a, b = open_cache(four).split("train"), open_cache(again).split("train")
    assert np.array_equal(a.features, b.features)

    other = tmp_path / "other-plan.h5"
    extract(make_dataset(root), "tiny", out=other, train_views=4, **{**KW, "shots": [1]})
    c = open_cache(other).split("train")
    pos = {int(r): k for k, r in enumerate(a.index)}
    assert set(c.index) < set(a.index)
    assert np.array_equal(c.features, a.features[[pos[int(r)] for r in c.index]])

    seeded = tmp_path / "seed7.h5"
    extract(make_dataset(root), "tiny", out=seeded, train_views=4, views_seed=7, **KW)
    d = open_cache(seeded).split("train")
    assert np.array_equal(d.features[:, :2], a.features[:, :2]) and not np.array_equal(
        d.features[:, 2:], a.features[:, 2:]
    )


def test_centre_and_mirror_are_those_of_a_plain_extraction(root, four, tmp_path):
    plain = tmp_path / "plain.h5"
    extract(make_dataset(root), "tiny", out=plain, **KW)
    p, f = open_cache(plain), open_cache(four)
    assert np.array_equal(p.split("train").features, f.split("train").features[:, :2])
    assert np.array_equal(p.split("test").features, f.split("test").features)
    assert "train_views" not in p.provenance and p.view_recipe() is None


def test_add_views_gives_the_views_of_a_direct_extraction_and_keeps_the_rest(root, four, tmp_path):
    path = tmp_path / "grow.h5"
    extract(make_dataset(root), "tiny", out=path, **KW)
    before = open_cache(path)
    with h5py.File(path, "r") as f:
        kept = {k: f[k][...] for k in ("splits/val/features", "splits/test/features", "text/simple/features")}
    r = add_views(make_dataset(root), "tiny", 4, out=path, num_workers=0)
    assert r.status == "views-added"
    after = open_cache(path)
    assert after.provenance_sha256 == before.provenance_sha256  # runs fitted before still match
    assert np.array_equal(after.split("train").features, open_cache(four).split("train").features)
    with h5py.File(path, "r") as f:
        for k, v in kept.items():
            assert np.array_equal(f[k][...], v), k
    rec = after.view_recipe()
    assert rec["added_views"] == ["rrc-1", "rrc-2"] and "--add-views 4" in rec["added_by"]
    assert verify_cache(path) == []
    # the same command again changes nothing; another recipe for more views is refused
    assert add_views(make_dataset(root), "tiny", 4, out=path, num_workers=0).status == "up-to-date"
    with pytest.raises(CmmError, match="same recipe"):
        add_views(make_dataset(root), "tiny", 5, out=path, num_workers=0, seed=9)
    # extract with as many views (or fewer) finds the cache up to date; more views name --add-views
    assert extract(make_dataset(root), "tiny", out=path, train_views=4, **KW).status == "up-to-date"
    assert extract(make_dataset(root), "tiny", out=path, **KW).status == "up-to-date"
    with pytest.raises(CmmError, match="--add-views 6"):
        extract(make_dataset(root), "tiny", out=path, train_views=6, **KW)


def test_add_views_refuses_another_backbone_or_dataset(root, tmp_path):
    path = tmp_path / "c.h5"
    extract(make_dataset(root), "tiny", out=path, **KW)
    with pytest.raises(CmmError, match="extracted with"):
        add_views(make_dataset(root), "tiny-rn", 4, out=path, num_workers=0)
    other = make_dataset(tmp_path / "other-imgs", seed=5)
    with pytest.raises(CmmError):
        add_views(other, "tiny", 4, out=path, num_workers=0)


def test_cli_train_views_and_add_views(tmp_path):
    base = ["extract", "--dataset", "tiny", "--backbone", "tiny", "--shots", "1", "--seeds", "1", "--workers", "0"]
    r = CliRunner().invoke(main, [*base, "--json"])
    assert r.exit_code == 0, r.output
    path = Path(json.loads(r.stdout)["path"])
    r = CliRunner().invoke(main, [*base, "--add-views", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "views-added"
    assert open_cache(path).views() == ["center", "hflip", "rrc-1"]
    r = CliRunner().invoke(main, [*base, "--train-views", "1"])
    assert r.exit_code != 0 and "1 is not in the range" in r.output
    r = CliRunner().invoke(main, [*base, "--views-crop-scale", "0.9,0.1"])
    assert r.exit_code != 0 and "MIN <= MAX" in r.output
    r = CliRunner().invoke(main, [*base, "--add-views", "4", "--force"])
    assert r.exit_code != 0 and "--add-views keeps the cache" in r.output
