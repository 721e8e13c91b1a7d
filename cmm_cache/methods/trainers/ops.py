"""The torch trainer's fast kernels, each guarded: probed on first use, with a public-API fallback.

Two of the fastest CPU kernels here are torch internals, not API:

* ``torch.ops.mkldnn._linear_pointwise`` (oneDNN; what torch.compile emits on
  CPU) computes the skinny products of a step (8 or 16 rows against a d×d or
  C×d matrix) in 40-60 % of MKL's time on 2 cores;
* ``torch._fused_adamw_`` is the kernel behind ``torch.optim.AdamW(fused=True)``;
  calling it directly saves ~90 µs of optimizer bookkeeping per step.

Either may change or vanish in a torch release. So each is checked once, the
first time a run needs it (never at import: importing this module does no
work and draws no random numbers), against the plain computation on a small
fixed input; if it is missing, raises or disagrees, the public path is used:
``a @ bᵀ`` and ``torch.optim.AdamW(fused=True)`` (or ``foreach=True`` where
the fused optimizer is not supported). ``CMM_CACHE_PORTABLE=1`` skips every
private op (and the compiled CPU loop) and uses only public torch API.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8

_lock = threading.Lock()
_probed: dict = {}


def portable() -> bool:
    """True when ``CMM_CACHE_PORTABLE`` asks for public torch API only."""
    return os.environ.get("CMM_CACHE_PORTABLE", "") not in ("", "0")


def _memo(key, probe) -> bool:
    with _lock:
        if key not in _probed:
            try:
                _probed[key] = bool(probe())
            except Exception:  # noqa: BLE001 — any failure of a private op means: do not use it
                _probed[key] = False
        return _probed[key]


def forget() -> None:
    """Forget the probes (tests: probe again under another environment)."""
    with _lock:
        _probed.clear()


def denormals_flushed() -> bool:
    """Whether this thread flushes subnormal floats to zero right now (a denormal input or result becomes 0)."""
    return float(torch.tensor([1e-39], dtype=torch.float32).mul(0.5)) == 0.0


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Flush subnormal floats to zero on this thread for the block, then restore the mode it had.

    Late in a run many gradients and AdamW moments decay below 1e-38, where
    CPU arithmetic is several times slower (measured: a DTD-sized step 1.7 ms
    instead of 1.3 ms on the torch path); values that small change no update.
    """
    was = denormals_flushed() if enabled else True
    if not was:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


def _fixed(*shape, dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    """A reproducible input from a private generator (the global RNG is left alone)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)


def onednn_ok() -> bool:
    """Whether the oneDNN linear op exists and agrees with a @ bᵀ (probed once)."""
    if portable() or not torch.backends.mkldnn.is_available():
        return False

    def probe():
        a, b = _fixed(8, 64, seed=1), _fixed(32, 64, seed=2)
        out = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        return torch.allclose(out, a @ b.t(), rtol=1e-4, atol=1e-4)

    return _memo("onednn", probe)


def linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ bᵀ, through oneDNN for float32 CPU tensors when it passed its probe."""
    if a.device.type == "cpu" and a.dtype == torch.float32 and onednn_ok():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.t()


def matmul(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x @ W, where W is usually the transposed view of the trainer's contiguous Wt."""
    return linear(x, W.t().contiguous())  # .contiguous() is free for that view


def outer(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """xᵀ g, returned as the transposed view of a contiguous gᵀ x (the layout of Wt)."""
    return linear(g.t().contiguous(), x.t().contiguous()).t()


def _adamw_expected(p, g, lr, wd, steps):
    """AdamW on float64 copies, written out: what every optimizer path must reproduce."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    for s in range(1, steps + 1):
        p *= 1 - lr * wd
        m = BETAS[0] * m + (1 - BETAS[0]) * g.double()
        v = BETAS[1] * v + (1 - BETAS[1]) * g.double() ** 2
        p -= lr / (1 - BETAS[0] ** s) * m / (v.sqrt() / (1 - BETAS[1] ** s) ** 0.5 + EPS)
    return p


def fused_adamw_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._fused_adamw_ exists for this device/dtype and computes AdamW (probed once)."""
    if portable():
        return False

    def probe():
        p, g = _fixed(4, 8, dtype=dtype, device=device, seed=3), _fixed(4, 8, dtype=dtype, device=device, seed=4)
        want = _adamw_expected(p, g, 1e-2, 1e-2, 2)
        m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), dtype=torch.float32, device=device)
        for _ in range(2):
            step += 1
            _call_fused([p], [g], [m], [v], [step], lr=1e-2, weight_decay=1e-2)
        return torch.allclose(p.double().cpu(), want.cpu(), rtol=1e-4, atol=1e-6)

    return _memo(("fused_adamw", torch.device(device).type, dtype), probe)


def _call_fused(params, grads, exp_avgs, exp_avg_sqs, steps, lr, weight_decay):
    torch._fused_adamw_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        lr=lr,
        beta1=BETAS[0],
        beta2=BETAS[1],
        weight_decay=weight_decay,
        eps=EPS,
        amsgrad=False,
        maximize=False,
    )


class AdamW:
    """AdamW over a fixed list of tensors with gradients handed in each step.

    ``kind`` says which implementation runs: "private" (torch._fused_adamw_
    called directly), "fused" (torch.optim.AdamW(fused=True)) or "foreach".
    All three compute the same update (a test holds them to float tolerance).
    """

    def __init__(self, params: list[torch.Tensor], weight_decay: float, kind: str | None = None):
        dev, dtype = params[0].device, params[0].dtype
        self.params, self.weight_decay = params, weight_decay
        if kind is None:
            kind = "private" if fused_adamw_ok(dev, dtype) else ("fused" if _public_fused_ok(dev, dtype) else "foreach")
        self.kind = kind
        if kind == "private":
            self.exp_avgs = [torch.zeros_like(p) for p in params]
            self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
            self.step_t = torch.zeros((), dtype=torch.float32, device=dev)
        else:
            kw = {"fused": True} if kind == "fused" else {"foreach": True}
            self.opt = torch.optim.AdamW(params, lr=1e-3, betas=BETAS, eps=EPS, weight_decay=weight_decay, **kw)

    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        # The fused kernels walk memory densely: a strided gradient (e.g. autograd's of a transposed product,
        # handed in directly rather than accumulated into .grad) would be read in the wrong order.
        grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        if self.kind == "private":
            self.step_t += 1
            _call_fused(
                self.params,
                grads,
                self.exp_avgs,
                self.exp_avg_sqs,
                [self.step_t] * len(self.params),
                lr=lr,
                weight_decay=self.weight_decay,
            )
            return
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.param_groups[0]["lr"] = lr
        self.opt.step()


def _public_fused_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch.optim.AdamW(fused=True) runs here (it is public, but not on every device/dtype)."""

    def probe():
        p = _fixed(4, 8, dtype=dtype, device=device, seed=3)
        p.grad = _fixed(4, 8, dtype=dtype, device=device, seed=4)
        torch.optim.AdamW([p], lr=1e-2, fused=True).step()
        return True

    return _memo(("public_fused", torch.device(device).type, dtype), probe)


def describe(device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """Which kernels the torch path uses here (for benchmarks and bug reports)."""
    dev = torch.device(device)
    return {
        "portable": portable(),
        "onednn_linear": dev.type == "cpu" and dtype == torch.float32 and onednn_ok(),
        "adamw": "private" if fused_adamw_ok(dev, dtype) else ("fused" if _public_fused_ok(dev, dtype) else "foreach"),
    }
