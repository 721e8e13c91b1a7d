"""`cmm-cache bench partial-ft`: the fit time of ``cross-modal-partial-ft`` at a real tower's size.

The tower is the architecture's own (open_clip, random weights: the time depends on shapes, not values),
cut as ``extract --finetune-blocks K`` cuts it; block inputs and text are random tensors of the real shapes
(DTD-sized by default: 47 classes, 16 shots × 2 views, 4 val images per class, 1 template). Measured: the
method's own loop (:func:`cmm_cache.methods.trainers.cross_modal_loop.train_configs`) for one config and
``iterations`` steps, and one val check on its own; the whole fit is then

    configs × (12,800 × seconds per step + 128 × seconds per val check)

(9 configs, 12,800 iterations and a val check every 100 iterations: the method's defaults), reported beside
the measured parts. ``--full`` fits the method itself with its defaults instead (minutes on a GPU, hours on
a CPU for RN50).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cmm_cache.backbones.cut import cut_tower
from cmm_cache.bench.fit import machine_line
from cmm_cache.methods.base import BlockData, FitData, fit_scope

ARCHS = {
    "rn50": "RN50-quickgelu",
    "vit-b-16": "ViT-B-16-quickgelu",
    "vit-b-32": "ViT-B-32-quickgelu",
    "tiny": "cmm-tiny",
    "tiny-rn": "cmm-tiny-rn",
}


def synthetic_block_fit_data(cut, classes=47, shots=16, val_per_class=4, templates=1, dim=None, seed=0, device="cpu"):
    """A FitData with block inputs of `cut`'s shape (random float16), centre and mirror views, per-template text."""
    g = torch.Generator().manual_seed(seed)
    state = cut.suffix_state()
    dim = dim or int(state["proj"].shape[1] if cut.arch == "vit" else state["attnpool.c_proj.weight"].shape[0])
    n, n_val = classes * shots, classes * val_per_class
    shape = tuple(cut.input_shape)
    train = (torch.randn(n, 2, *shape, generator=g) * 0.5).to(torch.float16).numpy()
    val = (torch.randn(n_val, *shape, generator=g) * 0.5).to(torch.float16).numpy()
    per = torch.randn(classes, templates, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(shots)
    weights = {k: v.numpy() for k, v in state.items()}
    dev = torch.device(device)
    return FitData(
        x_train=F.normalize(torch.randn(2 * n, dim, generator=g), dim=1).to(dev),
        y_train=y.repeat_interleave(2).to(dev),
        train_image=torch.arange(n).repeat_interleave(2).to(dev),
        x_val=F.normalize(torch.randn(n_val, dim, generator=g), dim=1).to(dev),
        y_val=torch.arange(classes).repeat_interleave(val_per_class).to(dev),
        T0=F.normalize(per.mean(1), dim=1).to(dev),
        classnames=[f"class {i}" for i in range(classes)],
        shots=shots,
        seed=1,
        device=dev,
        templates=[f"template {j}" for j in range(templates)],
        _per_template=lambda: per.numpy(),
        view_names=["center", "hflip"],
        blocks=BlockData(
            cut={**cut.describe(), "config": dict(cut.config)},
            train_views=["center", "hflip"],
            weights=lambda: weights,
            train=lambda: train,
            val=lambda: val,
        ),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_partial_ft(
    arch: str = "rn50",
    blocks: int = 1,
    classes: int = 47,
    shots: int = 16,
    iterations: int = 20,
    device: str = "cpu",
    full: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Seconds per training step and per val check of cross-modal-partial-ft, and the whole fit they make.

    Timed under the method's own thread policy (:func:`cmm_cache.methods.base.fit_scope`) unless `threads`."""
    import logging

    import open_clip

    from cmm_cache.backbones.registry import register_model_configs
    from cmm_cache.methods.cross_modal_partial_ft import GRID
    from cmm_cache.methods.registry import get_method

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    where = machine_line()
    dev = torch.device(device)
    try:
        register_model_configs()
        logging.disable(logging.WARNING)  # "initialized randomly": that is the point here
        try:
            model = open_clip.create_model(ARCHS.get(arch, arch), pretrained=None, device="cpu").eval()
        finally:
            logging.disable(logging.NOTSET)
        cut = cut_tower(model.visual, blocks)
        data = synthetic_block_fit_data(cut, classes, shots, device=dev)
        out = {
            "arch": arch,
            "model": ARCHS.get(arch, arch),
            "blocks": blocks,
            "input_shape": list(cut.input_shape),
            "trained_parameters": int(sum(v.numel() for v in cut.suffix_state().values()) + classes * data.dim),
            "classes": classes,
            "shots": shots,
            "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
            "machine": where,
        }
        if full:
            m = get_method("cross-modal-partial-ft")
            t0 = time.perf_counter()
            r = m.fit(data, m.resolve({}))  # under its own thread policy
            _sync(dev)
            out.update(full_fit_seconds=round(time.perf_counter() - t0, 2), iterations=r.iterations)
            if log:
                log(f"  whole fit ({r.iterations} steps): {out['full_fit_seconds']:.1f} s")
            return out
        n_configs = len(GRID["lr"]) * len(GRID["weight_decay"]) * len(GRID["batch_size"])
        with contextlib.nullcontext() if threads else fit_scope(data):
            out.update(_measure(data, cut, iterations, n_configs, dev))
        if log:
            log(
                f"  {out['seconds_per_step'] * 1e3:.2f} ms per step (4 images + 4 texts), "
                f"{out['seconds_per_val_check']:.3f} s per val check ({out['val_images']} images) -> whole fit "
                f"({n_configs} configs x {out['iterations_per_config']} steps): ~{out['estimated_fit_seconds']:.0f} s"
            )
        return out
    finally:
        torch.set_num_threads(old)


def _measure(data: FitData, cut, iterations: int, n_configs: int, dev: torch.device) -> dict:
    """Time the method's loop for one config and one val check on their own (see the module docstring)."""
    from cmm_cache.methods.cross_modal_partial_ft import GRID, LOGIT, PartialModel
    from cmm_cache.methods.trainers.cross_modal_loop import train_configs
    from cmm_cache.methods.trainers.linear_grid import EVAL_EVERY, ITERATIONS, grid_configs

    e = data.text_per_template().float()
    C, M, d = e.shape
    text_x, text_y = e.reshape(C * M, d), torch.arange(C, device=dev).repeat_interleave(M)
    pool = torch.from_numpy(data.blocks.train()).to(dev).reshape(-1, *cut.input_shape)
    val = torch.from_numpy(data.blocks.val()).to(dev)
    weights = {k: torch.from_numpy(v) for k, v in data.blocks.weights().items()}
    scale = math.exp(LOGIT)

    def make():
        return PartialModel(cut.config, weights, data.T0, pool)

    def val_acc(model):
        return float((model.scores(val, scale).argmax(1) == data.y_val).float().mean())

    grid = {"lr": GRID["lr"][:1], "weight_decay": GRID["weight_decay"][:1], "batch_size": GRID["batch_size"]}
    config = grid_configs(len(pool), len(text_x), 0.5, grid)  # their batch filter (a clear error if none fits)
    train_configs(make, config, len(pool), data.y_train, text_x, text_y, val_acc, 2, 1, scale)  # warm-up
    _sync(dev)
    model = make()
    t0 = time.perf_counter()
    with torch.no_grad():
        val_acc(model)
    _sync(dev)
    t_val = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_configs(make, config, len(pool), data.y_train, text_x, text_y, val_acc, iterations, 1, scale)
    _sync(dev)
    t_loop = time.perf_counter() - t0
    t_step = max(0.0, t_loop - len(range(0, iterations, EVAL_EVERY)) * t_val) / iterations
    estimate = n_configs * (ITERATIONS * t_step + len(range(0, ITERATIONS, EVAL_EVERY)) * t_val)
    return {
        "measured_iterations": iterations,
        "seconds_per_step": round(t_step, 5),
        "seconds_per_val_check": round(t_val, 4),
        "val_images": int(len(val)),
        "configs": n_configs,
        "iterations_per_config": ITERATIONS,
        "estimated_fit_seconds": round(estimate, 1),
    }
