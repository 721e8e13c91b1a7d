"""Lin et al.'s cross-modal training loop for heads with more than a linear layer, one config at a time.

Source: linzhiqiu/cross_modal_adaptation ``train.py`` (commit 39335d95c089a282ef648e637dea992548dfa330:
``train``, ``get_valid_batch_sizes``, the sweep), ``engine/model/logit.py`` (c7e7e68: ``LogitHead``),
``engine/optimizer/optim.py`` and ``scheduler.py`` (c7e7e68), ``engine/optimizer/default.py`` (064bb98).
Per iteration:

* a batch of ``int(0.5·bs)`` text samples and ``bs − int(0.5·bs)`` image samples, each side an epoch-wise
  shuffled stream with ``drop_last`` restarted when exhausted (:func:`.linear_grid.config_batches`; the
  streams are our own seeded generators, not their global RNG);
* image rows through the trainable image part (partial finetuning: the last blocks of the tower; the
  adapter: nothing), text rows as they are; both L2-normalized, then the head, times the fixed
  ``exp(logit)``; one mean cross-entropy over the concatenated batch;
* one AdamW (betas 0.9/0.999, eps 1e-8) over every trainable tensor, one lr and weight decay for all;
  lr of step i: :func:`.linear_grid.lr_at` (1e-5 at step 0, linear warm-up over 50 steps, cosine after);
* after the step of every iteration i with i % 100 == 0, the val accuracy; the state is kept when it is
  strictly better (the first check always counts); the best state is the config's result.

The configs of the grid run one after another (their loop order: lr, then weight decay, then batch size);
the best val accuracy wins, the first among ties (:mod:`cmm_cache.methods.search`). Everything in float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cmm_cache.methods.search import improves, select_scored
from cmm_cache.methods.trainers.linear_grid import EVAL_EVERY, Config, config_batches, lr_at


class CrossModalModel(torch.nn.Module):
    """What the loop trains: ``image_features(rows)`` (raw features [b, d] of the image samples at `rows`)
    and ``head(z)`` (class scores of normalized features, before the logit scale)."""

    def image_features(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class ConfigResult:
    config: Config
    val_acc: float
    best_iteration: int
    state: dict = field(repr=False)  # the best state_dict (cloned tensors)
    last_loss: float | None = None


@dataclass
class LoopResult:
    results: list[ConfigResult]
    iterations: int
    seconds: float

    def chosen(self) -> int:
        return select_scored(range(len(self.results)), [r.val_acc for r in self.results]).value

    def table(self) -> list[dict]:
        return [
            {"config": r.config.label(), "val_acc": r.val_acc, "best_iteration": r.best_iteration} for r in self.results
        ]


def adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's AdamW (betas 0.9/0.999, eps 1e-8); its fused kernel where torch has one for these tensors (5×
    faster per step on small heads; the same update up to float rounding)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def cross_modal_loss(model: CrossModalModel, image_rows, image_y, text_x, text_y, scale: float) -> torch.Tensor:
    """Mean cross-entropy of ``scale · head(normalize(features))`` over the image rows, then the text rows."""
    feats = model.image_features(image_rows)
    z = torch.cat([feats, text_x]) if len(text_x) else feats
    y = torch.cat([image_y, text_y]) if len(text_x) else image_y
    return F.cross_entropy(scale * model.head(F.normalize(z, dim=1)), y)


def train_configs(
    make_model: Callable[[], CrossModalModel],
    configs: list[Config],
    n_image: int,
    image_y: torch.Tensor,
    text_x: torch.Tensor,
    text_y: torch.Tensor,
    val_accuracy: Callable[[CrossModalModel], float],
    iterations: int,
    seed: int,
    scale: float,
    progress=None,
) -> LoopResult:
    """Train every config from a fresh `make_model()` (see the module docstring); returns each one's best state.

    Image sample i is ``model.image_features(tensor([i]))``'s row; `text_x` are raw text samples [n_text, d]."""
    t0 = time.perf_counter()
    batches = config_batches(configs, n_image, len(text_x), iterations, seed)
    device = text_x.device
    out = []
    total = iterations * len(configs)
    for k, (c, rows) in enumerate(zip(configs, batches)):
        model = make_model()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = adamw(params, c.lr, c.weight_decay)
        best_acc, best_iter, best_state, loss = -1.0, 0, None, None
        rows = rows.to(device)
        for i in range(iterations):
            for g in opt.param_groups:
                g["lr"] = lr_at(i, c.lr, iterations)
            b = rows[i]
            img, txt = b[: c.image_batch], b[c.image_batch :] - n_image
            model.train()
            with torch.enable_grad():
                loss = cross_modal_loss(model, img, image_y[img], text_x[txt], text_y[txt], scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if i % EVAL_EVERY == 0:
                model.eval()
                with torch.no_grad():
                    acc = float(val_accuracy(model))
                if improves(acc, best_acc):
                    best_acc, best_iter = acc, i
                    best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
                if progress is not None:
                    progress(k * iterations + i + 1, total, loss.item())
        out.append(ConfigResult(c, best_acc, best_iter, best_state, None if loss is None else loss.item()))
    return LoopResult(out, iterations, time.perf_counter() - t0)
