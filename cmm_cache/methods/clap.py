"""``clap``: CLAP, a zero-shot-initialized linear probe with a class-adaptive pull towards the text prototypes.

Source: Silva-Rodríguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models" (CVPR 2024); jusiro/CLAP ``trainers/adapters.py`` (commit
bc7c653644cb3fcfc1cd63d0cca68d14b922891c, unchanged at dbdf409: ``_get_base_text_features``,
``AdapterMethod`` with ``INIT = ZS`` and ``CONSTRAINT = l2``, ``zero_shot_constraint``,
``init_lagrangian_multipliers``, ``TrainerXCostume.run_epoch``, ``ADAPTER.forward_backward``),
``configs/trainers/SGD_lr1e-1_B256_ep300.yaml`` (d0c137a), Dassl's defaults and scheduler
(KaiyangZhou/Dassl.pytorch c61a1b5), ``experiments/experiment_CLAP.txt``:

* prototypes ``t_c = mean_m e_{c,m}``: the mean of the class's *raw* template embeddings, not normalized;
  the trained prototypes w_c start there; ``logits = 100 · normalize(f) · normalize(w_c)`` (CLIP's learned
  logit scale, 100 for OpenAI's weights, fixed);
* ``L = mean CE + (1/C) Σ_c λ_c ‖w_c − t_c‖²`` on the raw scale of the prototypes, with
  ``λ_c = mean_{i∈c} softmax(100 · normalize(f_i) · normalize(t)ᵀ)_c`` — the zero-shot probability of the
  true class over the class's augmented support samples, computed once and kept fixed (their ``l2``
  constraint; the augmented-Lagrangian update runs only for ``adaptative`` constraints);
* SGD (lr 0.1, momentum 0.9, no weight decay), 300 epochs; epoch 0 at lr 1e-5 (Dassl's constant warm-up),
  epoch e ≥ 1 at ``0.1 · ½(1 + cos(π (e − 1)/300))``; each epoch shuffles every augmented sample and takes
  ``⌊N/256⌋`` batches of 256 (one batch when N < 256; N the number of few-shot images: Dassl's loader
  length with ``drop_last``), so an epoch sees about N of the 20N rows;
* train samples: their ``epochs_aumentation`` = 20 passes of RandomResizedCrop + flip (Dassl's crop scale
  **(0.08, 1)**), all 20·N rows samples — the cache's first 20 augmented views (``extract --train-views 22
  --views-crop-scale 0.08,1`` for their crop scale; the default views use Tip-Adapter's (0.5, 1), and the
  run records which recipe the views followed). Without augmented views the centre and mirror stand in
  and the run says so;
* the result is the last epoch's model (Dassl's ``TEST.FINAL_MODEL = last_step``).

Validation: none — CLAP reads no validation data: Dassl builds a few-shot val loader that is never read;
the test set is scored every iteration for their logs, never to choose anything.
It needs the per-template text embeddings (the penalty sees their raw scale); a cache without them says
how to add them.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.evaluation.metrics import head_accuracy
from cmm_cache.heads.base import LOGIT_SCALE
from cmm_cache.heads.linear import LinearHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method


def class_penalties(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """λ_c: the zero-shot softmax probability of the true class, averaged over each class's samples."""
    p = torch.softmax(scale * x @ F.normalize(t, dim=-1).t(), dim=-1)
    onehot = F.one_hot(y, t.shape[0]).to(p.dtype)
    return (p * onehot).sum(0) / onehot.sum(0).clamp_min(1.0)


def clap_loss(w, x, y, t, lam, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """mean CE(scale · x normalize(w)ᵀ, y) + mean_c λ_c ‖w_c − t_c‖² (x normalized)."""
    ce = F.cross_entropy(scale * x @ F.normalize(w, dim=-1).t(), y)
    return ce + (lam * ((w - t) ** 2).sum(-1)).mean()


def lr_at_epoch(epoch: int, base: float, epochs: int, warmup_lr: float = 1e-5) -> float:
    """Dassl's cosine schedule after one constant warm-up epoch."""
    if epoch == 0:
        return warmup_lr
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def train_clap(x, y, t, lam, n_images, epochs, lr, batch, seed, progress=None) -> tuple[torch.Tensor, float | None]:
    """Their loop (see the module docstring); x are every augmented sample. Returns (w, last loss)."""
    w = t.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(int(seed))
    n_batches = max(1, n_images // batch) if n_images >= batch else 1
    loss = None
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(epoch, lr, epochs)
        order = torch.randperm(len(x), generator=g).to(x.device)
        for k in range(n_batches):
            rows = order[k * batch : (k + 1) * batch]
            with torch.enable_grad():
                loss = clap_loss(w, x[rows], y[rows], t, lam)
                opt.zero_grad()
                loss.backward()
            opt.step()
        if progress is not None and (epoch + 1) % 50 == 0:
            progress(epoch + 1, epochs, float(loss.detach()))
    return w.detach(), None if loss is None else float(loss.detach())


@scoped
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    t = data.text_per_template().float().mean(1)  # [C, d] raw mean: their base text features
    x, y = data.x_train.float(), data.y_train
    lam = class_penalties(x, y, t)
    epochs = int(options["epochs"])
    w, loss = train_clap(x, y, t, lam, data.num_images, epochs, float(options["lr"]), int(options["batch_size"]),
                         data.seed, progress)  # fmt: skip
    head = LinearHead(LOGIT_SCALE * F.normalize(w, dim=-1))
    return MethodResult(
        head=head,
        hparams={"lr": float(options["lr"]), "epochs": epochs, "lambda_mean": float(lam.mean())},
        val_acc=head_accuracy(head, data.x_val, data.y_val),
        fit_seconds=time.perf_counter() - t0,
        iterations=epochs * (max(1, data.num_images // int(options["batch_size"]))),
        extra={"final_loss": loss, "class_penalties": [round(float(v), 6) for v in lam]},
    )


METHOD = register_method(
    Method(
        name="clap",
        fit=fit,
        defaults={"epochs": 300, "lr": 0.1, "batch_size": 256},
        summary="Zero-shot-initialized linear probe with the class-adaptive penalty λ_c‖w_c − t_c‖²",
        source="Silva-Rodríguez et al. CVPR 2024, jusiro/CLAP trainers/adapters.py @ bc7c653",
        trained=True,
        budget="epochs",
        rank=36,
        selection="none: the last epoch (the official code reads no validation data)",
        views="rrc:20",
    )
)
