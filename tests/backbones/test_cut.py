"""Cutting an image tower: prefix + suffix is the whole tower, and heads.tower.TowerSuffix is that suffix."""

import numpy as np
import pytest
import torch
from torch import nn

from cmm_cache.backbones.cut import cut_tower, state_sha256
from cmm_cache.backbones.load import load_backbone
from cmm_cache.errors import CmmError
from cmm_cache.heads.tower import TowerSuffix


def _perturb(visual, seed=0):
    """Random weights everywhere, BatchNorm statistics included (open_clip zero-initializes each Bottleneck's
    last BN scale, which would make every residual branch vanish and hide mistakes in it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in visual.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in visual.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return visual.eval()


def _towers():
    import open_clip.transformer as oct

    vit = load_backbone("tiny").model.visual
    rn = load_backbone("tiny-rn").model.visual
    other = oct.VisionTransformer(  # GELU, LayerScale, average pooling with ln_post after it
        image_size=32, patch_size=8, width=32, layers=3, heads=4, mlp_ratio=2.0, ls_init_value=0.5,
        output_dim=16, pool_type="avg", final_ln_after_pool=True, act_layer=nn.GELU,
    )  # fmt: skip
    return {
        "tiny (ViT)": (vit, [1, 2]),
        "tiny-rn (ResNet)": (rn, [1, 2, 3, 4, 5, 6]),
        "ViT avg/GELU/LS": (other, [1, 3]),
    }


@pytest.mark.parametrize("name", ["tiny (ViT)", "tiny-rn (ResNet)", "ViT avg/GELU/LS"])
def test_prefix_then_suffix_is_the_tower_and_tower_suffix_is_the_suffix(name):
    visual, ks = _towers()[name]
    visual = _perturb(visual)
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = visual(x)
    for k in ks:
        cut = cut_tower(visual, k)
        with torch.no_grad():
            h = cut.prefix(x)
            assert tuple(h.shape[1:]) == cut.input_shape
            assert torch.equal(cut.suffix(h), full)  # the same modules in the same order: bit for bit
            mine = TowerSuffix(cut.config, cut.suffix_state())(h)
        torch.testing.assert_close(mine, full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))


@pytest.mark.parametrize("name", ["tiny (ViT)", "tiny-rn (ResNet)"])
def test_tower_suffix_gradients_are_open_clips(name):
    """What partial finetuning trains: the gradient of a loss through TowerSuffix equals the gradient through
    open_clip's own modules, tensor by tensor."""
    visual, ks = _towers()[name]
    visual = _perturb(visual, seed=3)
    k = ks[-1] if name.startswith("tiny-rn") else 1
    cut = cut_tower(visual, k)
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    with torch.no_grad():
        h = cut.prefix(torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(2)))
    target = torch.randn(5, 32, generator=torch.Generator().manual_seed(4))

    for p in cut.suffix.parameters():
        p.requires_grad_(True)
        p.grad = None
    ((cut.suffix(h) - target) ** 2).sum().backward()
    ref = {}
    for i, blk in enumerate(cut.suffix.blocks):
        ref.update({f"blocks.{i}.{n}": p.grad for n, p in blk.named_parameters()})
    tail = cut.suffix.ln_post.named_parameters() if cut.arch == "vit" else cut.suffix.attnpool.named_parameters()
    ref.update({(f"ln_post.{n}" if cut.arch == "vit" else f"attnpool.{n}"): p.grad for n, p in tail})
    if cut.arch == "vit":
        ref["proj"] = cut.suffix.proj.grad

    mine = TowerSuffix(cut.config, cut.suffix_state())
    ((mine(h) - target) ** 2).sum().backward()
    got = {k: mine.p(k).grad for k in mine.keys if mine.p(k).requires_grad}
    assert set(got) == set(ref)
    scale = max(float(g.abs().max()) for g in ref.values())  # the key bias's gradient is 0 up to rounding
    for key, g in ref.items():
        torch.testing.assert_close(got[key], g, rtol=1e-4, atol=1e-6 * scale, msg=key)


def test_fingerprints_follow_their_part():
    visual = _perturb(load_backbone("tiny").model.visual)
    a = cut_tower(visual, 1)
    with torch.no_grad():
        visual.transformer.resblocks[-1].mlp.c_fc.weight[0, 0] += 1.0  # above the cut
    b = cut_tower(visual, 1)
    assert a.prefix_sha256 == b.prefix_sha256 and a.suffix_sha256 != b.suffix_sha256
    with torch.no_grad():
        visual.conv1.weight[0, 0, 0, 0] += 1.0  # below it
    c = cut_tower(visual, 1)
    assert c.prefix_sha256 != b.prefix_sha256 and c.suffix_sha256 == b.suffix_sha256
    assert state_sha256({"w": torch.ones(2)}) != state_sha256({"w": torch.ones(3)})


def test_impossible_cuts_are_refused():
    vit = load_backbone("tiny").model.visual
    with pytest.raises(CmmError, match="2 residual blocks"):
        cut_tower(vit, 3)
    with pytest.raises(CmmError, match="at least 1"):
        cut_tower(vit, 0)
    with pytest.raises(CmmError, match="Bottleneck"):
        cut_tower(load_backbone("tiny-rn").model.visual, 7)
    with pytest.raises(CmmError, match="VisionTransformer or ModifiedResNet"):
        cut_tower(nn.Linear(2, 2), 1)


def test_block_inputs_in_the_cache_are_the_prefix_of_the_same_images(tmp_path):
    """Extracted with --finetune-blocks: block inputs = float16(prefix(image)), features = a plain extraction's,
    and the suffix run on the cached block inputs gives the cached features (up to the float16 rounding)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from support.extract import make_dataset

    from cmm_cache.cache.reader import open_cache
    from cmm_cache.cache.verify import verify_cache
    from cmm_cache.extract.pipeline import extract

    kw = dict(shots=[1], seeds=[1], chunk_rows=4, batch_size=4, num_workers=0, record_last=False)
    ds = make_dataset(tmp_path / "imgs")
    for bb_name, k in (("tiny", 1), ("tiny-rn", 2)):
        plain, blocks = tmp_path / f"{bb_name}-plain.h5", tmp_path / f"{bb_name}-blocks.h5"
        extract(ds, bb_name, out=plain, **kw)
        r = extract(ds, bb_name, out=blocks, finetune_blocks=k, **kw)
        assert any("block inputs" in n for n in r.notes)
        p, c = open_cache(plain), open_cache(blocks)
        assert verify_cache(blocks) == [] and c.has_blocks() and not p.has_blocks()
        for s in ("train", "val", "test"):
            assert np.array_equal(p.split(s).features, c.split(s).features)
        cut = c.block_cut()
        assert (
            cut["blocks"] == k and c.block_views("train") == ["center", "hflip"] and c.block_views("test") == ["center"]
        )
        assert c.provenance["blocks"]["prefix_sha256"] == cut["prefix_sha256"]

        bb = load_backbone(bb_name)
        tc = cut_tower(bb.model.visual, k)
        assert tc.prefix_sha256 == cut["prefix_sha256"] and tc.suffix_sha256 == cut["suffix_sha256"]
        from cmm_cache.extract.encode import load_image

        test = c.split("test")
        imgs = torch.stack([bb.preprocess(load_image(ds.splits["test"].paths[int(i)])) for i in test.index[:5]])
        with torch.no_grad():
            want = tc.prefix(imgs).to(torch.float16).numpy()
        got = c.block_inputs("test", np.arange(5))[:, 0]
        assert np.array_equal(got, want)

        suffix = TowerSuffix(cut["config"], {k2: torch.from_numpy(v) for k2, v in c.block_weights().items()})
        with torch.no_grad():
            f = suffix(torch.from_numpy(c.block_inputs("test")[:, 0].astype(np.float32))).numpy()
        cached = test.features[:, 0].astype(np.float32)
        cos = (f * cached).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(cached, axis=1))
        assert cos.min() > 0.999
