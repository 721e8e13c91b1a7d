"""``tip-adapter`` (training-free cache model) and ``tip-adapter-f`` (fine-tuned keys), Zhang et al., ECCV 2022.

Source: gaopengcuhk/Tip-Adapter — ``main.py`` and ``utils.py`` (commit
327763e336dc3e8393fadb97c04662c05cb34a38), ``configs/*.yaml`` (commit 4e29134179c971f2e617428f6dfe46066cf9b80d).

    logits = 100 · x T0ᵀ + α · exp(−β (1 − x Kᵀ)) V

* keys K: one per train image, the mean of the raw features of its 10 augmented views (their
  ``build_cache_model``: ``augment_epoch`` = 10 passes of RandomResizedCrop(scale (0.5, 1)) + flip, mean
  over passes, then normalized); V: the keys' one-hot labels. On a cache without augmented views
  (``extract --train-views 12`` makes 10) the centre and mirror views stand in, and the run says so;
* search (``search_hp``): β over ``[i·(s_β − 0.1)/n_β + 0.1 for i < n_β]``, α likewise, β outer,
  α inner, strictly better val accuracy wins (start: 0, so an all-wrong val keeps β = α = 0);
  n = (200, 20); the scales s and Tip-F's initial α and epochs are their per-dataset configs
  (DTD 13/13, EuroSAT 12/10, FGVC 30/30, ImageNet and Pets 7/3), ImageNet's for other datasets;
* Tip-Adapter-F: K becomes a parameter (their ``nn.Linear`` from the keys), trained with
  cross-entropy on the fused logits at β = 1 and the initial α, AdamW(lr 1e-3, eps 1e-4, their
  implicit weight decay 0.01), batch 256 shuffled, cosine over epochs × batches; after each epoch
  the fused accuracy is measured and the best epoch's keys are kept, then β and α are searched.
  Their script measures that per-epoch accuracy on the *test* set; here it is the val subset, so
  nothing is chosen on test. They draw a fresh augmentation of every image each epoch: here epoch e
  trains on augmented view (e mod V) of every image, the nearest a cache of V views comes; with the
  centre and mirror only, every epoch trains on both.

The zero-shot part is the cache's text classifier T0 (theirs averages normalized template
embeddings; the cache averages raw ones, CMM's eq. 2).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.datasets.manifests import resolve_name
from cmm_cache.evaluation.metrics import accuracy, percent
from cmm_cache.heads.tip_adapter import TipHead, tip_logits
from cmm_cache.methods.base import AUGMENTED, FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import improves, select_scored

# Their configs/<dataset>.yaml (commit 4e29134): (search_scale, init_alpha, train_epoch); init_beta is 1 everywhere.
CONFIGS = {
    "caltech101": ((12.0, 5.0), 3.0, 20),
    "dtd": ((13.0, 13.0), 2.0, 20),
    "eurosat": ((12.0, 10.0), 2.0, 100),
    "fgvc_aircraft": ((30.0, 30.0), 5.0, 20),
    "food101": ((10.0, 10.0), 1.17, 20),
    "imagenet": ((7.0, 3.0), 1.17, 20),
    "oxford_flowers": ((50.0, 50.0), 10.0, 20),
    "oxford_pets": ((7.0, 3.0), 1.17, 20),
    "stanford_cars": ((20.0, 10.0), 3.0, 20),
    "sun397": ((12.0, 10.0), 1.17, 20),
    "ucf101": ((7.0, 3.0), 3.0, 20),
}
DEFAULT_CONFIG = CONFIGS["imagenet"]


def dataset_config(dataset: str) -> tuple:

    try:
        name = resolve_name(dataset) or dataset
    except Exception:  # noqa: BLE001 — an unregistered name simply has no published config
        name = dataset
    return CONFIGS.get(name, DEFAULT_CONFIG)


def cache_model(data: FitData) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [n_images, d]: each image's views' raw features averaged, then normalized; their labels)."""
    n = int(data.train_image.max()) + 1
    keys = torch.zeros(n, data.dim, dtype=data.x_train.dtype, device=data.device)
    raw = data.x_train if data.train_norm is None else data.x_train * data.train_norm[:, None].to(data.x_train.dtype)
    keys.index_add_(0, data.train_image, raw)
    labels = torch.zeros(n, dtype=torch.long, device=data.device)
    labels[data.train_image] = data.y_train
    return F.normalize(keys, dim=-1), labels


def search_grid(scale: float, steps: int) -> list[float]:
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def _class_sums(values: torch.Tensor):
    """E -> E @ values as a function. With every class holding the same number of keys (a few-shot
    cache always does) it is a reshape-and-sum over the keys sorted by class: n·N additions instead
    of an n·N·C matmul (0.25 s of 0.3 s for 200 betas at 100 classes × 16 shots)."""
    labels = values.argmax(1)
    counts = torch.bincount(labels, minlength=values.shape[1])
    if int(counts.min()) == int(counts.max()) and int(counts.min()) > 0:
        order = torch.argsort(labels, stable=True)
        per = int(counts[0])
        return order, lambda E: E.view(*E.shape[:-1], values.shape[1], per).sum(-1)
    return None, lambda E: E @ values


def _alpha_hits(clip, cache, alphas: torch.Tensor, y) -> torch.Tensor:
    """[b, len(alphas)] val hits of argmax(clip + α·cache) for every β row of cache [b, n, C] and α.

    Exact and cheaper than scoring all C classes at every α: each class's fused logit is a line in
    α, so a class whose line lies below another's over the whole α range can never be the arg-max
    (kept with a margin far above float rounding); only the few remaining candidates are scored, in
    class order, so ties go to the first index as in a full argmax.
    """
    z0, z1 = clip + alphas[0] * cache, clip + alphas[-1] * cache
    upper = torch.maximum(z0, z1)
    floor = torch.minimum(z0, z1).amax(-1, keepdim=True)
    keep = upper >= floor - 1e-4 * (floor.abs() + 1.0)
    k = int(keep.sum(-1).max())
    idx = upper.topk(k, dim=-1).indices.sort(-1).values  # [b, n, k]
    cz, cc = clip.expand_as(cache).gather(-1, idx), cache.gather(-1, idx)
    z = cz[:, None] + alphas[None, :, None, None] * cc[:, None]  # [b, a, n, k]
    pred = idx[:, None].expand(z.shape).gather(-1, z.argmax(-1, keepdim=True))[..., 0]
    return (pred == y).sum(-1)


def search_hp(keys, values, T0, x_val, y_val, scale, steps, chunk: int = 8) -> tuple[float, float, float]:
    """Their ``search_hp`` on val: (beta, alpha, accuracy); β outer, α inner, strictly better wins.

    Betas are scored `chunk` at a time; the order of the comparisons is theirs.
    """
    betas, alphas = search_grid(scale[0], steps[0]), search_grid(scale[1], steps[1])
    order, sums = _class_sums(values)
    affinity, clip = x_val @ keys.t(), 100.0 * x_val @ T0.t()
    if order is not None:
        affinity = affinity[:, order]
    A = torch.tensor(alphas, dtype=x_val.dtype, device=x_val.device)  # ascending, as their grid
    pairs, scores = [], []  # (beta, alpha) in their loop order: beta outer, alpha inner
    with torch.no_grad():
        for i in range(0, len(betas), chunk):
            B = torch.tensor(betas[i : i + chunk], dtype=x_val.dtype, device=x_val.device)[:, None, None]
            cache = sums(torch.exp(-B * (1.0 - affinity)))  # [b, n, C]
            hits = _alpha_hits(clip, cache, A, y_val).tolist()  # [b, alphas]
            for beta, row in zip(betas[i : i + chunk], hits):
                pairs += [(beta, alpha) for alpha in alphas]
                scores += [percent(h, len(y_val)) for h in row]
    chosen = select_scored(pairs, scores, start=((0.0, 0.0), 0.0))  # their initial best: beta = alpha = 0
    return chosen.value[0], chosen.value[1], chosen.score


def _options_for(data: FitData, options: dict) -> tuple:
    scale, init_alpha, epochs = dataset_config(data.dataset)
    return (
        tuple(options["search_scale"] or scale),
        tuple(options["search_steps"]),
        float(init_alpha if options.get("init_alpha") is None else options["init_alpha"]),
        int(epochs if options.get("epochs") is None else options["epochs"]),
    )


@scoped
def fit_tip(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    scale, steps, _, _ = _options_for(data, options)
    keys, labels = cache_model(data)
    values = F.one_hot(labels, data.num_classes).to(keys.dtype)
    beta, alpha, acc = search_hp(keys, values, data.T0, data.x_val, data.y_val, scale, steps)
    return MethodResult(
        head=TipHead(keys, labels, data.T0, alpha, beta),
        hparams={"alpha": alpha, "beta": beta, "search_scale": list(scale)},
        val_acc=acc,
        fit_seconds=time.perf_counter() - t0,
    )


def train_keys(data: FitData, keys, values, alpha, beta, epochs, lr, batch, max_steps=None, progress=None):
    """Tip-Adapter-F's training loop; returns (best keys, best epoch, per-epoch val accuracies, steps run)."""
    x, y, T0 = data.x_train, data.y_train, data.T0
    augmented = any(str(v).startswith(AUGMENTED) for v in (data.view_names or []))
    if augmented:  # epoch e: augmented view (e mod V) of every image (theirs: a fresh augmentation per epoch)
        xs, ys = data.by_view(), data.by_view(data.y_train)
    else:
        xs, ys = x[None], y[None]
    W = torch.nn.Parameter(keys.clone())
    per_epoch = math.ceil(xs.shape[1] / batch)
    total = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, int(max_steps))
    opt = torch.optim.AdamW([W], lr=lr, eps=1e-4)  # torch's default weight decay 0.01, as theirs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    g = torch.Generator().manual_seed(int(data.seed))
    best, best_epoch, best_acc, history, steps = keys.clone(), -1, 0.0, [], 0
    for epoch in range(epochs):
        if steps >= total:
            break
        x, y = xs[epoch % len(xs)], ys[epoch % len(ys)]
        for b in torch.randperm(len(x), generator=g).to(x.device).split(batch):
            if steps >= total:
                break
            with torch.enable_grad():
                loss = F.cross_entropy(tip_logits(x[b], W, values, T0, alpha, beta), y[b])
                opt.zero_grad()
                loss.backward()
            opt.step()
            sched.step()
            steps += 1
        with torch.no_grad():
            acc = accuracy(tip_logits(data.x_val, W, values, T0, alpha, beta), data.y_val)
        history.append(acc)
        if improves(acc, best_acc):  # the shared rule; their start: accuracy 0
            best, best_epoch, best_acc = W.detach().clone(), epoch, acc
        if progress is not None:
            progress(steps, total, float(loss.detach()))
    return best, best_epoch, history, steps


@scoped
def fit_tip_f(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    scale, steps, init_alpha, epochs = _options_for(data, options)
    keys, labels = cache_model(data)
    values = F.one_hot(labels, data.num_classes).to(keys.dtype)
    lr, batch, cap = options["lr"], options["batch_size"], options["max_iterations"]
    trained, best_epoch, history, n = train_keys(data, keys, values, init_alpha, 1.0, epochs, lr, batch, cap, progress)
    beta, alpha, acc = search_hp(trained, values, data.T0, data.x_val, data.y_val, scale, steps)
    return MethodResult(
        head=TipHead(trained, labels, data.T0, alpha, beta),
        hparams={"alpha": alpha, "beta": beta, "best_epoch": best_epoch, "epochs": epochs, "init_alpha": init_alpha},
        val_acc=acc,
        fit_seconds=time.perf_counter() - t0,
        iterations=n,
        extra={"epoch_val_acc": history},
    )


_SEARCH = {"search_scale": None, "search_steps": [200, 20]}  # scale None: the dataset's published one
SOURCE = "Zhang et al. ECCV 2022, gaopengcuhk/Tip-Adapter main.py + utils.py @ 327763e"

TIP = register_method(
    Method(
        name="tip-adapter",
        fit=fit_tip,
        defaults=dict(_SEARCH),
        summary="Training-free cache model of the few-shot features fused with zero-shot (beta/alpha on val)",
        source=SOURCE,
        rank=40,
        cost=4.0,
        selection="few-shot val (beta, alpha; theirs: the full val split, ImageNet: test)",
        views="rrc:10",
    )
)

TIP_F = register_method(
    Method(
        name="tip-adapter-f",
        fit=fit_tip_f,
        defaults={
            **_SEARCH,
            "init_alpha": None,
            "epochs": None,
            "lr": 1e-3,
            "batch_size": 256,
            "max_iterations": None,
        },
        summary="Tip-Adapter with fine-tuned cache keys (best epoch and beta/alpha on val)",
        source=SOURCE + " (run_tip_adapter_F)",
        trained=True,
        budget="max_iterations",
        rank=41,
        cost=11.0,
        selection="few-shot val (epoch, beta, alpha; theirs: the epoch on test, beta/alpha on the full val split)",
        views="rrc:10",
    )
)
