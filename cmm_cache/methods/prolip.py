"""``prolip-linear``: a d×d linear map of the image feature, from identity, with ProLIP's ‖W − I‖² penalty.

Source: Fahes et al., "CLIP's Visual Embedding Projector is a Few-shot Cornucopia" (ProLIP);
astra-vision/ProLIP ``methods/RegLinearAdapter.py`` and ``configs/experiments/*.yaml`` (commit
18facf5d4cd6692bab81f4de60ccb10dc692a65e) — their *regularized linear adapter*, ProLIP applied to a
new d×d layer after CLIP's projection, which is what a cache of projected features allows:

    logits = 100 · normalize(x Wᵀ) T0ᵀ,   W₀ = I
    L = CE(logits, y) + λ ‖W − I‖²_F    (``MSELoss(reduction="sum")``)

Full batch (one step per epoch, epoch t uses the t-th view in their cycling order: views 1, 2, …, V−1,
0, … of the augmented views — theirs are ``aug_views`` = 300 passes of RandomResizedCrop(scale (0.5, 1)) +
flip, here the cache's augmented views, as many as it holds up to 300 (``extract --train-views 302``);
without any, the centre and mirror views stand in and the run says so), Adam
(eps 1e-4, no weight decay), ``CosineAnnealingLR(T_max=epochs)``, 300 epochs. Their few-shot-val
setting searches lr ∈ {1e-2, …, 1e-8} × λ ∈ {10, 1, 0.1, 0.01, 1e-3, 1e-4, 0} on val: 49 trainings
of 300 full-batch d×d steps, ~5 minutes per 16-shot run at 47 classes × 1024-d on a 2-core CPU.
Scaled here: λ follows their validation-free rule λ = 1/N (N = shots), which they show "almost
match[es] grid search results", and only the lr is chosen on val from {1e-2, 1e-3, 1e-4, 1e-5}
(the four lrs of their λ = 1/N runs) — 4 trainings, trained together (~16 s at 1 shot, ~60 s at
16 shots for 47 classes × 1024-d on one thread). Pass ``lambdas`` (and
``lrs``) for their full grid.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.evaluation.metrics import head_accuracy
from cmm_cache.heads.map import MapHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import select_on_val


def view_order(epochs: int, views: int) -> list[int]:
    """Their ``cnt`` cycling: which view each epoch trains on (V = 2: 1, 0, 1, 0, …)."""
    cnt, out = 0, []
    for _ in range(epochs):
        cnt = 0 if (cnt + 1) % views == 0 else cnt + 1
        out.append(cnt)
    return out


def prolip_loss(W, x, y, T0, lam):
    """CE(100 · normalize(x Wᵀ) T0ᵀ, y) + λ ‖W − I‖²: the transcription, for one W or a stack [K, d, d]."""
    I = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    logits = 100.0 * F.normalize(x @ W.transpose(-1, -2), dim=-1) @ T0.t()
    ce = F.cross_entropy(logits.reshape(-1, T0.shape[0]), y.repeat(W.shape[0]) if W.dim() == 3 else y)
    k = W.shape[0] if W.dim() == 3 else 1
    lam = torch.as_tensor(lam, dtype=W.dtype, device=W.device).reshape(-1)
    reg = ((W - I) ** 2).reshape(k, -1).sum(1)
    return k * ce + (lam * reg).sum()  # sum over the stack of each one's own loss


def train_maps(views_x, y, T0, lrs, lams, epochs, progress=None) -> torch.Tensor:
    """Train one W per (lr, λ) pair together (each its own Adam); views_x [V, n, d]. Returns [K, d, d]."""
    K, d = len(lrs), views_x.shape[-1]
    W = torch.eye(d, dtype=views_x.dtype, device=views_x.device).repeat(K, 1, 1).requires_grad_(True)
    lr_t = torch.tensor(lrs, dtype=views_x.dtype, device=views_x.device)[:, None, None]
    m, v = torch.zeros_like(W), torch.zeros_like(W)
    order = view_order(epochs, views_x.shape[0])
    for t in range(epochs):
        x = views_x[order[t]]
        with torch.enable_grad():
            loss = prolip_loss(W, x, y, T0, lams)  # the sum of independent losses: each W gets its own gradient
            (g,) = torch.autograd.grad(loss, W)
        with torch.no_grad():  # torch.optim.Adam's update (no weight decay, eps 1e-4), cosine lr
            step = t + 1
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            scale = 0.5 * (1.0 + math.cos(math.pi * t / epochs)) / (1.0 - 0.9**step)
            denom = (v / (1.0 - 0.999**step)).sqrt_().add_(1e-4)
            W.sub_(lr_t * scale * m / denom)
        if progress is not None and (t + 1) % 50 == 0:
            progress(t + 1, epochs, float(loss.detach()) / K)
    return W.detach()


@scoped(single_thread=True)
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    n_img = int(data.train_image.max()) + 1
    V = len(data.x_train) // n_img
    views = data.x_train.view(n_img, V, data.dim).transpose(0, 1)  # [V, n, d]; train samples are image-major
    y = data.y_train.view(n_img, V)[:, 0]
    lams = options["lambdas"] if options["lambdas"] is not None else [1.0 / data.shots]
    pairs = [(lr, lam) for lr in options["lrs"] for lam in lams]  # their loop order: lr outer, λ inner
    epochs = int(options["epochs"])
    W = train_maps(views, y, data.T0, [p[0] for p in pairs], [p[1] for p in pairs], epochs, progress)
    chosen = select_on_val(range(len(pairs)), lambda k: head_accuracy(MapHead(W[k], data.T0), data.x_val, data.y_val))
    k, val = chosen.value, chosen.score
    return MethodResult(
        head=MapHead(W[k], data.T0),
        hparams={"lr": pairs[k][0], "lambda": pairs[k][1]},
        val_acc=val,
        fit_seconds=time.perf_counter() - t0,
        iterations=epochs * len(pairs),
        extra={"search": [{"lr": p[0], "lambda": p[1]} for p in pairs]},
    )


METHOD = register_method(
    Method(
        name="prolip-linear",
        fit=fit,
        defaults={"lrs": [1e-2, 1e-3, 1e-4, 1e-5], "lambdas": None, "epochs": 300},
        summary="d×d map of the image feature from identity, CE + λ‖W − I‖² (λ = 1/shots), lr on val",
        source="Fahes et al. (ProLIP), astra-vision/ProLIP methods/RegLinearAdapter.py @ 18facf5",
        trained=True,
        budget="epochs",
        rank=60,
        cost=130.0,
        views="rrc:300",
    )
)
