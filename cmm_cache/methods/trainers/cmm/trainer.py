"""The CMM trainer (paper §3, §4.1), pure tensors: :func:`train_cmm`.

Only two tensors are trained, on cached CLIP features:

    v̂  = normalize(v)                       one view of one train image = one sample
    v' = v̂ W + v̂ ;  v̂' = normalize(v')      W starts at 0, so v' = v̂ at the start
    s  = v̂' Tᵀ                              T starts at the cached text features T0
    P  = alpha·softmax(100 s) + softmax(100 v̂ T0ᵀ)          (alpha = 1 while training)
    L  = −mean log P[y]  +  mean max(0, D[y] − min_{j≠y} D[j] + 1),  D = 1 − v̂ normalize(T)ᵀ

AdamW (lr 1e-4, weight decay 1e-4), batch 8, 16,000 iterations, linear warm-up
over 50 iterations then cosine to 1e-5. Three implementations, on purpose:

* :class:`ReferenceCMM` / :func:`fit_reference` — a plain autograd + nn.Module
  transcription of the equations above: the test oracle and the benchmark's
  baseline (`cmm-cache bench fit --reference`), not the trainer.
* the compiled CPU loop (:mod:`.kernel`, ``cmm_loop.c``) — the
  default for float32 on the CPU: whole segments of iterations in C, one pass
  over W, m and v per step.
* the torch path (:mod:`.torch_loop`) — the same hand-derived step in
  torch ops: CUDA, float64, and wherever the compiled loop is unavailable.

:func:`train_cmm` picks the implementation, draws the batches up front and runs the
loop in segments, choosing the CPU thread count by timing
(:mod:`.threads`). Tests hold all three to the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cmm_cache.errors import CmmError
from cmm_cache.heads.base import LOGIT_SCALE
from cmm_cache.methods.trainers.cmm import kernel
from cmm_cache.methods.trainers.cmm.threads import ThreadChooser, candidates
from cmm_cache.methods.trainers.cmm.torch_loop import TorchLoop, clip_prob_true


@dataclass
class TrainConfig:
    """What decides the trained W and T: the loss and the optimizer. Defaults are the paper's.

    Everything here is part of a run's identity. How the loop runs (:class:`Runtime`) and how alpha is then
    chosen (the ``cmm`` method's ``alpha`` option) are kept apart on purpose: neither changes W or T.
    """

    iterations: int = 16000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: int = 50  # linear warm-up iterations, then cosine to min_lr
    min_lr: float = 1e-5
    margin: float = 1.0  # triplet margin on cosine distance
    train_alpha: float = 1.0  # alpha inside the training loss
    # Ablations (paper Table 6)
    use_map: bool = True  # False: no W, only T is learned
    triplet: bool = True  # False: no triplet term
    cmm_only: bool = False  # True: train and predict with softmax(100 s) alone
    # Open choices the paper leaves to the implementer
    normalize_T_in_s: bool = False  # s = v̂' normalize(T)ᵀ instead of v̂' Tᵀ
    fusion: str = "prob"  # "prob": alpha·softmax + softmax; "logit": softmax(alpha·z_cmm + z_clip)

    def validate(self) -> None:
        if self.fusion not in ("prob", "logit"):
            raise CmmError(f"Unknown fusion '{self.fusion}'.", "Use --fusion prob or --fusion logit.")
        for name in ("iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise CmmError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.warmup < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise CmmError("--warmup, --lr and --weight-decay must be non-negative (lr positive).")


@dataclass
class Runtime:
    """How the loop runs: never part of a run's identity (the compiled loop is bit-identical for any thread count;
    the torch path agrees with it to float tolerance)."""

    threads: int | None = None  # CPU threads for the loop; None: chosen by timing while it runs (threads.py)
    engine: str = "auto"  # "auto" (compiled loop where it applies), "kernel" (insist), "torch"


# ----------------------------------------------------------------------------
# Inputs, drawn and prepared once per run


def draw_batches(num_samples: int, iterations: int, batch_size: int, seed: int) -> torch.Tensor:
    """[iterations, batch] sample indices, drawn up front from one seeded generator.

    Epoch-wise shuffling (each sample once per pass, like a shuffled DataLoader),
    concatenated across epochs so every batch is full.
    """
    g = torch.Generator().manual_seed(int(seed))
    need = iterations * batch_size
    perms = [torch.randperm(num_samples, generator=g) for _ in range(-(-need // num_samples))]
    return torch.cat(perms)[:need].view(iterations, batch_size)


def lr_schedule(cfg: TrainConfig) -> list[float]:
    """Linear warm-up over `warmup` iterations, then cosine from lr to min_lr."""
    out = []
    span = max(cfg.iterations - cfg.warmup, 1)
    for t in range(cfg.iterations):
        if t < cfg.warmup:
            out.append(cfg.lr * (t + 1) / cfg.warmup)
        else:
            c = 0.5 * (1 + math.cos(math.pi * (t - cfg.warmup) / span))
            out.append(cfg.min_lr + (cfg.lr - cfg.min_lr) * c)
    return out


# ----------------------------------------------------------------------------
# The reference: the equations, transcribed for autograd


class ReferenceCMM(torch.nn.Module):
    """The loss above, written the obvious way. Oracle for tests and bench."""

    def __init__(self, T0: torch.Tensor, cfg: TrainConfig):
        super().__init__()
        d = T0.shape[1]
        self.cfg = cfg
        self.register_buffer("T0", T0.clone())
        self.T = torch.nn.Parameter(T0.clone())
        self.W = torch.nn.Parameter(torch.zeros(d, d, dtype=T0.dtype)) if cfg.use_map else None

    def forward(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        v_hat = F.normalize(v, dim=-1)
        v_map = v_hat @ self.W + v_hat if self.W is not None else v_hat
        T_s = F.normalize(self.T, dim=-1) if cfg.normalize_T_in_s else self.T
        s = F.normalize(v_map, dim=-1) @ T_s.t()
        clip = LOGIT_SCALE * v_hat @ self.T0.t()
        if cfg.cmm_only:
            loss = F.cross_entropy(LOGIT_SCALE * s, y)
        elif cfg.fusion == "logit":
            loss = F.cross_entropy(cfg.train_alpha * LOGIT_SCALE * s + clip, y)
        else:
            P = cfg.train_alpha * torch.softmax(LOGIT_SCALE * s, -1) + torch.softmax(clip, -1)
            loss = -torch.log(P.gather(1, y[:, None])).mean()
        if cfg.triplet:
            D = 1 - v_hat @ F.normalize(self.T, dim=-1).t()
            pos = D.gather(1, y[:, None]).squeeze(1)
            neg = D.scatter(1, y[:, None], float("inf")).min(dim=1).values
            loss = loss + torch.clamp(pos - neg + cfg.margin, min=0).mean()
        return loss


def fit_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    T0: torch.Tensor,
    cfg: TrainConfig,
    batches: torch.Tensor | None = None,
    seed: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor, float]:
    """Train with ReferenceCMM + DataLoader-free batches + torch.optim.AdamW. Returns (W, T, seconds)."""
    model = ReferenceCMM(T0, cfg).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = draw_batches(len(x), cfg.iterations, cfg.batch_size, seed) if batches is None else batches
    lrs = lr_schedule(cfg)
    t0 = time.perf_counter()
    for t in range(cfg.iterations):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        b = batches[t].to(x.device)
        loss = model(x[b], y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    W = model.W.detach() if model.W is not None else None
    return W, model.T.detach(), seconds


# ----------------------------------------------------------------------------
# The trainer


@dataclass
class TrainResult:
    W: torch.Tensor | None
    T: torch.Tensor
    seconds: float
    iterations: int
    losses: list = field(default_factory=list)  # (iteration, loss) every `log_every`
    engine: str = ""  # which implementation ran ("compiled CPU loop", "torch (...)")
    engine_note: str | None = None  # why the compiled CPU loop did not run where it would have applied
    threads: dict = field(default_factory=dict)  # the thread choice (ThreadChooser.summary)


def _kernel_fits(x: torch.Tensor, T0: torch.Tensor, cfg: TrainConfig) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and cfg.batch_size <= kernel.MAX_BATCH
        and T0.shape[0] >= 2
        and len(x) < 2**31
    )


def make_loop(x, y, T0, p0y, cfg: TrainConfig, batches, lrs, engine: str = "auto"):
    """The loop that runs this fit: the compiled CPU loop where it applies and builds, else the torch path.

    `engine` "kernel" insists on the compiled loop (a clear error where it cannot run),
    "torch" skips it; "auto" (the default) prefers it.
    """
    if engine not in ("auto", "kernel", "torch"):
        raise ValueError(f"engine must be auto, kernel or torch, not {engine!r}")
    if engine != "torch" and _kernel_fits(x, T0, cfg):
        lib = kernel.load()
        if lib is not None:
            loop = kernel.KernelLoop(lib, x, y, p0y, T0, cfg)
            loop.set_schedule(batches, lrs)
            return loop
    if engine == "kernel":
        why = kernel.status()["reason"] if _kernel_fits(x, T0, cfg) else "float32 CPU tensors, batch <= 64 only"
        raise CmmError(
            f"The compiled CPU training loop cannot run here ({why}).", "Use the torch path (engine='auto')."
        )
    return TorchLoop(x, y, T0, p0y, cfg, batches, lrs)


def train_cmm(
    x: torch.Tensor,
    y: torch.Tensor,
    T0: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int = 1,
    runtime: Runtime | None = None,
    progress: Callable[[int, float | None], None] | None = None,
    log_every: int = 500,
    batches: torch.Tensor | None = None,
) -> TrainResult:
    """Train W and T on normalized samples x [N, d] with labels y [N] from T0 [C, d].

    The batches are drawn from `seed` (unless given). The loss is recorded every `log_every` iterations
    (and at the last), and `progress(iteration, loss)` is called then. `runtime`: threads and engine
    (see :func:`make_loop`).
    """
    runtime = runtime or Runtime()
    cfg.validate()
    dev = x.device
    if batches is None:
        batches = draw_batches(len(x), cfg.iterations, cfg.batch_size, seed)
    lrs = lr_schedule(cfg)
    T0 = T0.to(dev, x.dtype)
    p0y = clip_prob_true(x, y, T0)
    loop = make_loop(x, y, T0, p0y, cfg, batches, lrs, runtime.engine)
    note = None
    if not isinstance(loop, kernel.KernelLoop) and runtime.engine == "auto" and _kernel_fits(x, T0, cfg):
        note = f"compiled CPU loop not used: {kernel.status()['reason']}"
    chooser = ThreadChooser(candidates(dev, runtime.threads))
    every = max(int(log_every), 1)
    losses = []
    t, n_it = 0, cfg.iterations
    t0 = time.perf_counter()
    try:
        while t < n_it:
            threads, length = chooser.next()
            end = min(t + length, (t // every + 1) * every, n_it)  # segments end at every report
            want = {end} if (end % every == 0 or end == n_it) else set()
            s = time.perf_counter()
            got = loop.run(t, end, threads, want)
            chooser.record(threads, end - t, time.perf_counter() - s)
            if want:
                losses.append((end, float(got[end])))
                if progress is not None:
                    progress(end, losses[-1][1])
            t = end
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        W, T = loop.weights()
    finally:
        loop.close()
    return TrainResult(
        W=W,
        T=T,
        seconds=seconds,
        iterations=n_it,
        losses=losses,
        engine=getattr(loop, "name", type(loop).__name__),
        engine_note=note,
        threads=chooser.summary(),
    )
