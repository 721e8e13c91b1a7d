"""``lp++``: LP++, a linear probe blended with the text classifier through learned class-wise weights.

Source: Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe for
Few-Shot CLIP" (CVPR 2024); FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py``,
``methods/utils.py``, ``utils.py``, ``main.py``, ``configs/base.yaml`` (commit
4d1b771f72d3abc091b76c6527d813a11f639008, unchanged at f81054f):

    logits = W f + b + α ⊙ (f T)          f: the L2-normalized image feature; no logit scale

* T [d, C]: CLIP's ensembled text classifier (``clip_classifier``: normalize each template's embedding,
  average, normalize), from the cache's per-template embeddings (with one template it is T0; without them
  and several templates, T0 stands in and the run says so);
* init: ``W_c = Σ_{i∈c} f_i`` (the class *sum*: their division is commented out), b PyTorch's default
  ``nn.Linear`` bias U(±1/√d) (here from a generator seeded by the run's seed), α = 250 · mean_c s_c with
  ``s_c = mean_{i∈c} f_i·t_c`` (one value for every class);
* step sizes from the data: ``η_W = 4N / λ_max(FᵀF)`` (F the [N, d] train features) and
  ``η_α = N / (4 · max_c Σ_i (f_i·t_c)²)``;
* 300 epochs, full batch, mean cross-entropy: W and b by SGD (lr η_W, momentum 0.9) every epoch; α is not
  in the optimizer: after epochs 10, 20, …, 300 ``α ← α − η_α · α.grad``, where α.grad is never reset, so
  it is the sum of the α-gradients of every epoch so far — their release's update, reproduced as it is;
* train samples: one RandomResizedCrop(scale (0.5, 1)) + flip view per image, drawn once per task (their
  train loader pass) — the cache's first augmented view (``extract --train-views 3`` or more; with none, the
  centre and mirror views stand in and the run says so).

Validation: none here — the model after the last epoch is the result (``select_epoch_on_val`` False).
**Their released code does read a validation split**: every epoch it scores a K-shot val set (ImageNet:
K more train images) and reports the test accuracy of the epoch with the best val accuracy (ties: the
later epoch). ``select_epoch_on_val=True`` reproduces that choice of epoch on the few-shot val subset,
by the project's tie rule (strictly better, so the earlier epoch). Their features and head are float16
on the GPU; here everything is float32.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import accuracy, head_accuracy
from cmm_cache.heads.linear import LinearHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import improves


def clip_text_classifier(data: FitData) -> tuple[torch.Tensor, list[str]]:
    """[C, d] CLIP's ensembled classifier (normalize each template, mean, normalize) and warnings: from the
    per-template embeddings; without them T0, which equals it with one template."""
    try:
        e = data.text_per_template().float()
    except CmmError:
        warn = []
        if len(data.templates) > 1:
            warn.append(
                "the cache has no per-template text embeddings: T0 (the mean of raw template embeddings) stands "
                "in for the classifier of normalized template embeddings the official code uses (add them with "
                "`cmm-cache extract ... --add-text`)"
            )
        return data.T0.float(), warn
    return F.normalize(F.normalize(e, dim=-1).mean(1), dim=-1), []


def lp_pp_init(f: torch.Tensor, y: torch.Tensor, T: torch.Tensor, num_classes: int, seed: int) -> dict:
    """Their initial W, b, α and step sizes (see the module docstring); f [N, d] normalized, T [C, d]."""
    N, d = f.shape
    onehot = F.one_hot(y, num_classes).to(f.dtype)  # [N, C]
    W = onehot.t() @ f  # class sums
    g = torch.Generator().manual_seed(int(seed))
    b = ((torch.rand(num_classes, generator=g) * 2.0 - 1.0) / math.sqrt(d)).to(f)
    ft = f @ T.t()  # [N, C]
    s = (onehot * ft).sum(0) / onehot.sum(0).clamp_min(1.0)
    alpha = torch.full((num_classes,), 250.0 * float(s.mean()), dtype=f.dtype, device=f.device)
    lam = torch.linalg.eigvalsh((f.t() @ f).double()).max()
    lr_w = float(4.0 * N / lam)
    lr_alpha = float(N / (4.0 * (ft**2).sum(0).max()))
    return {"W": W, "b": b, "alpha": alpha, "lr_w": lr_w, "lr_alpha": lr_alpha}


def lp_pp_logits(f, W, b, alpha, T):
    return f @ W.t() + b + alpha * (f @ T.t())


def train_lp_pp(f, y, T, init: dict, epochs: int, x_val=None, y_val=None, select_on_val=False, progress=None):
    """Their loop (see the module docstring); returns (W, b, α, chosen epoch, last loss)."""
    W = init["W"].clone().requires_grad_(True)
    b = init["b"].clone().requires_grad_(True)
    alpha = init["alpha"].clone().requires_grad_(True)
    opt = torch.optim.SGD([W, b], lr=init["lr_w"], momentum=0.9)
    keep, best, best_epoch, loss = None, -1.0, epochs - 1, None
    for epoch in range(epochs):
        with torch.enable_grad():
            loss = F.cross_entropy(lp_pp_logits(f, W, b, alpha, T), y)
            opt.zero_grad()  # W and b only: alpha.grad keeps accumulating, as in their release
            loss.backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            with torch.no_grad():
                alpha -= init["lr_alpha"] * alpha.grad
        if select_on_val:
            with torch.no_grad():
                acc = accuracy(lp_pp_logits(x_val, W, b, alpha, T), y_val)
            if improves(acc, best):
                best, best_epoch = acc, epoch
                keep = (W.detach().clone(), b.detach().clone(), alpha.detach().clone())
        if progress is not None and (epoch + 1) % 50 == 0:
            progress(epoch + 1, epochs, float(loss.detach()))
    if keep is None:
        keep = (W.detach(), b.detach(), alpha.detach())
    return (*keep, best_epoch, None if loss is None else float(loss.detach()))


@scoped
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    T, warnings = clip_text_classifier(data)
    f, y = data.x_train.float(), data.y_train
    init = lp_pp_init(f, y, T, data.num_classes, data.seed)
    epochs = int(options["epochs"])
    W, b, alpha, epoch, loss = train_lp_pp(
        f, y, T, init, epochs, data.x_val, data.y_val, bool(options["select_epoch_on_val"]), progress
    )
    head = LinearHead(W + alpha[:, None] * T, b)
    return MethodResult(
        head=head,
        hparams={
            "epoch": epoch + 1,
            "lr_w": init["lr_w"],
            "lr_alpha": init["lr_alpha"],
            "alpha_init": float(init["alpha"][0]),
            "alpha_mean": float(alpha.mean()),
        },
        val_acc=head_accuracy(head, data.x_val, data.y_val),
        fit_seconds=time.perf_counter() - t0,
        iterations=epochs,
        extra={"final_loss": loss, "warnings": warnings},
    )


METHOD = register_method(
    Method(
        name="lp++",
        fit=fit,
        defaults={"epochs": 300, "select_epoch_on_val": False},
        summary="Linear probe + class-wise weighted text logits, data-derived step sizes, 300 full-batch epochs",
        source="Huang et al. CVPR 2024, FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py "
        "@ 4d1b771",
        trained=True,
        budget="epochs",
        rank=35,
        selection="none: the last epoch (their release picks the epoch on a K-shot val split)",
        views="rrc:1",
    )
)
