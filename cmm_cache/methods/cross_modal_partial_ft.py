"""``cross-modal-partial-ft``: cross-modal partial finetuning of the image tower's last blocks (Lin et al., CVPR 2023).

Source: Lin, Yu, Wang, Ramanan, "Multimodality Helps Unimodality: Cross-Modal Few-Shot Learning with
Multimodal Models"; linzhiqiu/cross_modal_adaptation — ``partial_finetuning.sh`` and ``train.py`` (commit
39335d95c089a282ef648e637dea992548dfa330), ``engine/clip/partial_model.py`` (39335d9: where the tower is
cut), ``engine/model/head.py`` (39335d9: ``get_zero_shot_weights``), ``engine/optimizer/default.py``
(064bb98: the ``partial`` grid), ``features.py`` (fa289f9: the cached layer features). Their recipe, as
their script runs it (``--image-layer-idx 1 --hyperparams partial --logit 4.0 --classifier_init zeroshot``):

* the image tower is cut below its last block (RN50: the attention pool; ViT: the last residual block) and
  the input of that block is cached for the centre crop and its mirror (here: ``extract --finetune-blocks
  K``, :mod:`cmm_cache.backbones.cut`); what is fine-tuned is everything above the cut — the block(s), the
  pooling and the projection (RN50: ``attnpool`` with ``c_proj``; ViT: the block, ``ln_post`` and ``proj``);
* the head: ``exp(4.0) · normalize(f) Wᵀ`` (no bias, W not re-normalized), W initialized with their
  zero-shot weights ``normalize(mean_m e_{c,m})`` of the raw per-template text embeddings — the cache's
  T0 (before 39335d9 they averaged normalized embeddings; that version never ran this script);
* every template's raw text embedding is one more sample of its class (normalized at the head's input,
  passing through no image block); each batch is 4 text + 4 image samples (batch 8);
* AdamW over the fine-tuned blocks and W with one lr and weight decay, grid lr {1e-5, 1e-6, 1e-7} ×
  weight decay {0, 1e-3, 1e-5}, 12,800 iterations, their warm-up + cosine schedule, val accuracy every
  100 iterations with the best state kept, the config with the best val accuracy chosen
  (:mod:`cmm_cache.methods.trainers.cross_modal_loop`).

Deviations, and why: their cache and training are float32; the cache stores block inputs in float16
(half the size: 196 KiB per RN50 image and view), upcast to float32 for every step. Their val subset is
``min(4, K)`` images per class of the few-shot val split, as ours. They also report a WiSE-FT head
(``head_wiseft_0.5``); this method reports the fine-tuned head itself. K > 1 on a ResNet (also the last
Bottlenecks) exists in their code (``image_layer_idx`` 2) but no script runs it; here their BatchNorms
keep their running statistics. Runs on cached block inputs only: ``eval`` scores the fine-tuned blocks
on the cache's test block inputs, ``predict``/``export`` run the frozen tower up to the cut and then them
(:class:`cmm_cache.heads.partial_ft.PartialFTHead`).
"""

from __future__ import annotations

import math
import time

import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.partial_ft import PartialFTHead
from cmm_cache.heads.tower import TowerSuffix
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.trainers.cross_modal_loop import CrossModalModel, train_configs
from cmm_cache.methods.trainers.linear_grid import TEXT_RATIO, grid_configs, grid_defaults

LOGIT = 4.0  # their --logit for partial finetuning: scale e^4
GRID = {"lr": [1e-5, 1e-6, 1e-7], "weight_decay": [0.0, 1e-3, 1e-5], "batch_size": [8]}


class PartialModel(CrossModalModel):
    """The fine-tuned part above the cut and the linear head, on a pool of cached block inputs."""

    def __init__(self, config: dict, weights: dict, W0: torch.Tensor, pool: torch.Tensor):
        super().__init__()
        self.suffix = TowerSuffix(config, weights).to(W0.device)
        self.W = torch.nn.Parameter(W0.detach().clone().float())
        self.pool = pool  # [n_samples, *shape] float16, not a parameter

    def image_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.pool[rows].float())

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.t()

    def scores(self, block_inputs: torch.Tensor, scale: float, chunk: int = 256) -> torch.Tensor:
        out = [scale * self.head(torch.nn.functional.normalize(self.suffix(block_inputs[i : i + chunk].float()), dim=1))
               for i in range(0, len(block_inputs), chunk)]  # fmt: skip
        return torch.cat(out) if out else torch.zeros(0, self.W.shape[0], device=self.W.device)


def block_samples(data: FitData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(train block inputs [n_images·Vb, *shape] float16, their labels, val block inputs, the views used)."""
    b = data.blocks
    if b is None:
        raise CmmError(
            "cross-modal-partial-ft fine-tunes the image tower's last blocks on their cached inputs, and this "
            "cache holds none.",
            "Extract it with `cmm-cache extract ... --finetune-blocks 1 --force`.",
        )
    train = torch.from_numpy(b.train()).to(data.device)  # [n, Vb, *shape], rows in few-shot order
    n, vb = train.shape[0], train.shape[1]
    labels = data.y_train.view(data.num_images, data.views_per_image)[:, 0]
    if n != data.num_images:
        raise CmmError(f"The cache holds block inputs for {n} train images, its features {data.num_images}.")
    pool = train.reshape(n * vb, *train.shape[2:])
    y = labels.repeat_interleave(vb)
    return pool, y, torch.from_numpy(b.val()).to(data.device), list(b.train_views)


@scoped  # one thread below d = 768 (small ops); a real tower's blocks are large matrix products
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    pool, y, val, views = block_samples(data)
    e = data.text_per_template().float()  # [C, M, d] raw
    C, M, d = e.shape
    text_x, text_y = e.reshape(C * M, d), torch.arange(C, device=e.device).repeat_interleave(M)
    cut = data.blocks.cut
    weights = {k: torch.from_numpy(v) for k, v in data.blocks.weights().items()}
    try:
        d_out = TowerSuffix(cut["config"], weights).check(cut["input_shape"])
    except ValueError as e:
        raise CmmError(f"The cache's weights above the cut are unusable: {e}.", "Re-extract it with --force.") from e
    if d_out != data.dim:
        raise CmmError(f"The cache's blocks give {d_out}-d features, its text features are {data.dim}-d.",
                       "Re-extract it with --force.")  # fmt: skip
    scale = math.exp(float(options["logit"]))
    grid = {"lr": options["lr"], "weight_decay": options["weight_decay"], "batch_size": options["batch_size"]}
    configs = grid_configs(len(pool), len(text_x), float(options["text_ratio"]), grid)
    W0 = data.T0.float()

    def make():
        return PartialModel(cut["config"], weights, W0, pool)

    def val_acc(model: PartialModel) -> float:
        pred = model.scores(val, scale).argmax(1)
        return 100.0 * float((pred == data.y_val).sum()) / max(1, len(data.y_val))

    iters = int(options["iterations"])
    r = train_configs(make, configs, len(pool), y, text_x, text_y, val_acc, iters, data.seed, scale, progress)
    k = r.chosen()
    best = make()
    best.load_state_dict(r.results[k].state, strict=False)
    head = PartialFTHead(best.suffix, best.W.detach(), scale, cut)
    c = r.results[k].config
    return MethodResult(
        head=head,
        hparams={"lr": c.lr, "weight_decay": c.weight_decay, "batch_size": c.batch_size},
        val_acc=r.results[k].val_acc,
        fit_seconds=time.perf_counter() - t0,
        iterations=iters * len(configs),
        extra={
            "search": r.table(),
            "text_samples": int(len(text_x)),
            "block_views": views,
            "finetuned_blocks": int(cut["blocks"]),
            "finetuned_parameters": int(sum(p.numel() for p in best.suffix.trainable()) + best.W.numel()),
        },
    )


METHOD = register_method(
    Method(
        name="cross-modal-partial-ft",
        fit=fit,
        defaults=grid_defaults(GRID, text_ratio=TEXT_RATIO, logit=LOGIT),
        summary="Fine-tunes the image tower's last block(s) and a linear head from text, with each template's "
        "text embedding as a sample, on cached block inputs (extract --finetune-blocks)",
        source="Lin et al. CVPR 2023, linzhiqiu/cross_modal_adaptation partial_finetuning.sh + train.py @ 39335d9",
        trained=True,
        budget="iterations",
        rank=32,
        selection="few-shot val (lr, weight decay, best iteration), as theirs",
        inputs="block_inputs",
    )
)
