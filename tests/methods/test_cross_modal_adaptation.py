"""cross-modal-partial-ft and cross-modal-adapter against plain transcriptions of Lin et al.'s training loop.

The transcriptions follow linzhiqiu/cross_modal_adaptation train.py line by line: nn.Modules (for partial
finetuning open_clip's own last block, ln_post and proj), LogitHead (normalize, head, × exp(logit)),
torch.optim.AdamW, their lr schedule, val every 100 iterations keeping the strictly better state — fed the
same batches as the method.
"""

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.text_cache import make_text_cache

from cmm_cache.cache.reader import open_cache
from cmm_cache.methods.base import fit_data
from cmm_cache.methods.cross_modal_adapter import RATIO, config_seed, init_adapter, train_adapters
from cmm_cache.methods.cross_modal_partial_ft import PartialModel
from cmm_cache.methods.registry import get_method
from cmm_cache.methods.trainers.cross_modal_loop import cross_modal_loss, train_configs
from cmm_cache.methods.trainers.linear_grid import Config, config_batches, grid_configs, lr_at
from cmm_cache.runs.protocol import fit_run

ITERS = 230  # three val checks (0, 100, 200)


@pytest.fixture(autouse=True)
def _one_thread():
    """As the methods run (methods.base.scoped): many small ops, one thread (two wait on each other on a busy
    machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reference(model, params, configs_k, batch_rows, n_image, image_x_fn, image_y, text_x, text_y, val_fn, scale):
    """Their train() for one config: returns (best state_dict, best val, best iteration)."""
    c = configs_k
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    best = (None, None, None)
    for i in range(ITERS):
        for g in opt.param_groups:
            g["lr"] = lr_at(i, c.lr, ITERS)
        b = batch_rows[i]
        img, txt = b[: c.image_batch], b[c.image_batch :] - n_image
        feature = torch.cat([image_x_fn(img), text_x[txt]], 0)
        label = torch.cat([image_y[img], text_y[txt]], 0)
        logit = model["head"](F.normalize(feature, dim=1)) * scale  # LogitHead
        loss = F.cross_entropy(logit, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0:
            with torch.no_grad():
                acc = val_fn()
            if best[1] is None or acc > best[1]:
                best = ({k: v.detach().clone() for k, v in model.items_state().items()}, acc, i)
    return best


# ------------------------------------------------------------------------------------------- the adapter


class _Adapter(torch.nn.Module):
    """Their engine/model/head.py Adapter (reduction 4, residual ratio 0.2) then nn.Linear(d, C, bias=False)."""

    def __init__(self, W1, W2, W):
        super().__init__()
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(W1.shape[1], W1.shape[0], bias=False),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(W2.shape[1], W2.shape[0], bias=False),
            torch.nn.ReLU(inplace=True),
        )
        self.fc[0].weight.data, self.fc[2].weight.data = W1.clone(), W2.clone()
        self.linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        self.linear.weight.data = W.clone()

    def forward(self, x):
        a = self.fc(x)
        return self.linear(RATIO * a + (1 - RATIO) * x)


class _Dict(dict):
    def items_state(self):
        return self["state"]()


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    return open_cache(make_text_cache(tmp_path_factory.mktemp("cma") / "c.h5", blocks=True))


def test_adapter_trains_each_config_as_the_plain_loop_would(text_cache):
    data = fit_data(text_cache, 4, 1, views=["center", "hflip"])
    e = data.text_per_template()
    C, M, d = e.shape
    text_x, text_y = e.reshape(C * M, d), torch.arange(C).repeat_interleave(M)
    configs = grid_configs(len(data.x_train), len(text_x), 0.5, {"lr": [1e-3, 1e-4], "weight_decay": [0.0, 1e-3],
                                                                  "batch_size": [8]})  # fmt: skip
    scale = math.exp(4.60517)
    pool, pool_y = torch.cat([data.x_train, text_x]), torch.cat([data.y_train, text_y])
    W1, W2, W, vals, its = train_adapters(
        pool, pool_y, len(data.x_train), data.T0, data.x_val, data.y_val, configs, ITERS, 5, scale
    )
    batches = config_batches(configs, len(data.x_train), len(text_x), ITERS, 5)
    for k, c in enumerate(configs):
        w1, w2 = init_adapter(d, config_seed(5, k))
        net = _Adapter(w1, w2, data.T0)
        model = _Dict(head=net, state=lambda net=net: {"W1": net.fc[0].weight, "W2": net.fc[2].weight,
                                                       "W": net.linear.weight})  # fmt: skip

        def val(net=net):
            return 100.0 * float((net(data.x_val).argmax(1) == data.y_val).float().mean())

        state, acc, it = _reference(
            model, list(net.parameters()), c, batches[k], len(data.x_train), lambda r: data.x_train[r],
            data.y_train, text_x, text_y, val, scale,
        )  # fmt: skip
        assert vals[k] == pytest.approx(acc) and its[k] == it, c
        for name, got in (("W1", W1[k]), ("W2", W2[k]), ("W", W[k])):
            torch.testing.assert_close(got, state[name], rtol=2e-4, atol=2e-6, msg=f"{c.label()} {name}")


def test_adapter_learns_and_selects_on_val(text_cache):
    m = get_method("cross-modal-adapter")
    data = fit_data(text_cache, 4, 1, views=["center", "hflip"])
    r = m.fit(data, m.resolve({"iterations": 800}))
    zs = 100.0 * float(((data.x_val @ data.T0.t()).argmax(1) == data.y_val).float().mean())
    assert r.val_acc > zs  # it learned something on this synthetic gap
    assert r.val_acc == max(row["val_acc"] for row in r.extra["search"]) and len(r.extra["search"]) == 12
    assert r.head.kind == "adapter" and r.iterations == 800 * 12


# ------------------------------------------------------------------------------------------- partial finetuning


@pytest.fixture(scope="module")
def tiny_blocks(tmp_path_factory):
    """A real extraction with the tiny ViT backbone and --finetune-blocks 1."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from support.extract import make_dataset

    from cmm_cache.extract.pipeline import extract

    root = tmp_path_factory.mktemp("pft")
    ds = make_dataset(root / "imgs", per_class=(6, 3, 4))
    out = root / "c.h5"
    extract(ds, "tiny", out=out, shots=[2], seeds=[1], chunk_rows=8, batch_size=8, num_workers=0,
            record_last=False, finetune_blocks=1)  # fmt: skip
    return open_cache(out)


def test_partial_ft_trains_open_clips_last_block_as_the_plain_loop_would(tiny_blocks):
    """The method's loop (functional suffix, fused AdamW) against their loop on open_clip's own modules."""
    from cmm_cache.backbones.cut import cut_tower
    from cmm_cache.backbones.load import load_backbone

    data = fit_data(tiny_blocks, 2, 1, views=["center", "hflip"])
    b = data.blocks
    pool = torch.from_numpy(b.train()).reshape(-1, *b.cut["input_shape"])
    y = data.y_train.view(-1, 2)[:, 0].repeat_interleave(2)
    val_x = torch.from_numpy(b.val())
    e = data.text_per_template()
    C, M, d = e.shape
    text_x, text_y = e.reshape(C * M, d), torch.arange(C).repeat_interleave(M)
    configs = [Config(1e-3, 0.0, 8, 4), Config(1e-4, 1e-3, 8, 4)]  # larger lrs than theirs, to move in 230 steps
    scale = math.exp(4.0)
    weights = {k: torch.from_numpy(v) for k, v in b.weights().items()}

    def make():
        return PartialModel(b.cut["config"], weights, data.T0, pool)

    def val_acc(model):
        return 100.0 * float((model.scores(val_x, scale).argmax(1) == data.y_val).float().mean())

    r = train_configs(make, configs, len(pool), y, text_x, text_y, val_acc, ITERS, 3, scale)
    batches = config_batches(configs, len(pool), len(text_x), ITERS, 3)
    visual = load_backbone("tiny").model.visual
    for k, c in enumerate(configs):
        suffix = copy.deepcopy(cut_tower(visual, 1).suffix)  # open_clip's block, ln_post, proj
        head = torch.nn.Linear(d, C, bias=False)
        head.weight.data = data.T0.clone()
        params = list(suffix.parameters()) + [head.weight]
        for p in params:
            p.requires_grad_(True)

        def state(suffix=suffix, head=head):
            s = {f"blocks.0.{n}": p for n, p in suffix.blocks[0].named_parameters()}
            s.update({f"ln_post.{n}": p for n, p in suffix.ln_post.named_parameters()})
            return {**s, "proj": suffix.proj, "W": head.weight}

        def val(suffix=suffix, head=head):
            z = head(F.normalize(suffix(val_x.float()), dim=1))
            return 100.0 * float((z.argmax(1) == data.y_val).float().mean())

        model = _Dict(head=head, state=state)
        ref, acc, it = _reference(
            model, params, c, batches[k], len(pool), lambda rows, s=suffix: s(pool[rows].float()), y, text_x, text_y,
            val, scale,
        )  # fmt: skip
        got = r.results[k]
        assert got.val_acc == pytest.approx(acc) and got.best_iteration == it
        for name, want in ref.items():
            key = "W" if name == "W" else "suffix.params." + name.replace(".", "__")
            have = got.state[key]
            if name.endswith("attn.in_proj_bias"):
                # The key bias cancels in the softmax: its gradient is rounding noise, which Adam's normalization
                # turns into lr-sized random steps in both loops. It changes no output; compare q and v only.
                w = want.shape[0] // 3
                have, want = torch.cat([have[:w], have[2 * w :]]), torch.cat([want[:w], want[2 * w :]])
            torch.testing.assert_close(have, want, rtol=2e-4, atol=2e-5, msg=f"{c.label()} {name}")


def test_partial_ft_loss_is_the_cross_entropy_of_the_scaled_normalized_batch(tiny_blocks):
    data = fit_data(tiny_blocks, 2, 1)
    b = data.blocks
    pool = torch.from_numpy(b.train()).reshape(-1, *b.cut["input_shape"])
    model = PartialModel(b.cut["config"], {k: torch.from_numpy(v) for k, v in b.weights().items()}, data.T0, pool)
    img, txt = torch.tensor([0, 3, 5]), torch.randn(2, data.dim)
    yi, yt = torch.tensor([0, 1, 2]), torch.tensor([2, 0])
    loss = cross_modal_loss(model, img, yi, txt, yt, 7.0)
    f = torch.cat([model.suffix(pool[img].float()), txt])
    want = -torch.log_softmax(7.0 * F.normalize(f, dim=1) @ model.W.t(), 1)[torch.arange(5), torch.cat([yi, yt])].mean()
    torch.testing.assert_close(loss, want)


def test_partial_ft_run_scores_its_blocks_on_the_cached_test_inputs(tiny_blocks):
    from cmm_cache.runs.protocol import fit_run

    r, arrays = fit_run(tiny_blocks, 2, 1, method="cross-modal-partial-ft", options={"iterations": 120,
                                                                                     "lr": [1e-3, 1e-4]})  # fmt: skip
    assert r["head"]["kind"] == "partial-ft" and r["train_views"] == ["center", "hflip"]
    assert r["head"]["params"]["cut"]["prefix_sha256"] == tiny_blocks.block_cut()["prefix_sha256"]
    assert any(k.startswith("suffix.") for k in arrays) and "weight" in arrays
    # the test accuracy is the head's on the cached block inputs of test
    from cmm_cache.heads.base import load_head

    head = load_head("partial-ft", {k: v for k, v in arrays.items() if k != "T0"}, r["head"]["params"])
    te = tiny_blocks.split("test")
    x = torch.from_numpy(tiny_blocks.block_inputs("test")[:, 0].astype(np.float32))
    acc = 100.0 * float((head.logits(x).argmax(1).numpy() == te.labels).mean())
    assert r["test_acc"] == pytest.approx(acc)


def test_the_shared_adamw_takes_strided_gradients():
    """Autograd hands back strided gradients (here of a transposed product); every AdamW kind must read them
    as torch.optim.AdamW does."""
    from cmm_cache.methods.trainers.ops import AdamW

    for kind in ("private", "fused", "foreach"):
        g = torch.Generator().manual_seed(0)
        W = torch.randn(5, 3, generator=g)
        grad = torch.randn(3, 5, generator=g).t()  # not contiguous
        assert not grad.is_contiguous()
        mine, ref = W.clone(), torch.nn.Parameter(W.clone())
        try:
            AdamW([mine], weight_decay=0.01, kind=kind).step([grad], 1e-3)
        except (RuntimeError, TypeError, AttributeError):  # a kind this torch lacks
            continue
        ref.grad = grad.clone()
        torch.optim.AdamW([ref], lr=1e-3, weight_decay=0.01).step()
        torch.testing.assert_close(mine, ref.detach(), msg=kind)


def test_damaged_blocks_are_refused_where_they_are_read(text_cache, tmp_path):
    """A run folder whose fine-tuned blocks lack a tensor fails when loaded (not when scoring); a cache whose
    weights above the cut do not fit their config stops the fit with a clear message."""
    import json

    import h5py

    from cmm_cache.errors import CmmError
    from cmm_cache.heads.run_folder import load_run
    from cmm_cache.runs.store import write_run

    r, arrays = fit_run(text_cache, 1, 1, method="cross-modal-partial-ft", options={"iterations": 5})
    run = write_run(tmp_path / "run", r, arrays, text_cache)
    assert load_run(run).head.kind == "partial-ft"
    damaged = {k: v for k, v in arrays.items() if k != "suffix.proj"}
    write_run(tmp_path / "bad", r, damaged, text_cache)
    with pytest.raises(CmmError, match="incomplete or damaged"):
        load_run(tmp_path / "bad")
    assert json.loads((run / "result.json").read_text())["head"]["kind"] == "partial-ft"

    path = tmp_path / "c.h5"
    make_text_cache(path, blocks=True)
    with h5py.File(path, "r+") as f:
        del f["blocks/suffix/blocks.0.mlp.c_fc.weight"]
    with pytest.raises(CmmError, match="weights above the cut are unusable"):
        fit_run(open_cache(path), 1, 1, method="cross-modal-partial-ft", options={"iterations": 5})
