"""The trainer's torch path: the hand-derived step of one batch and the loop over it.

Used on CUDA, for float64, where the compiled CPU loop (:mod:`.kernel`)
is unavailable or switched off, and as its test oracle at float32. Every op is a
small matmul or a row-wise op; the d×d products and AdamW go through the guarded
kernels of :mod:`cmm_cache.methods.trainers.ops`.
"""

from __future__ import annotations

import torch

from cmm_cache.heads.base import LOGIT_SCALE
from cmm_cache.methods.trainers import ops


def clip_prob_true(x: torch.Tensor, y: torch.Tensor, T0: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """softmax(100 v̂ T0ᵀ)[y] per sample. T0 is frozen, so with probability fusion
    the CLIP branch enters the loss only through this one number per sample."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), chunk):
        z = LOGIT_SCALE * x[i : i + chunk] @ T0.t()
        out[i : i + chunk] = torch.softmax(z, -1).gather(1, y[i : i + chunk, None]).squeeze(1)
    return out


def cmm_grads(W, T, T0, x, y, p0y, cfg, want_loss=False):
    """Loss (if asked) and gradients (gW, gT) of the CMM loss (see cmm_cache.methods.trainers.cmm.trainer) on one batch.

    x: [B, d] normalized image features; y: [B]; p0y: [B] softmax(100 v̂ T0ᵀ)[y]
    (used by probability fusion; logit fusion recomputes the CLIP logits).
    W may be None (no-map ablation). gW comes back as the transposed view of a
    contiguous buffer (see fit_ops.outer): gW.t() has the layout of the trainer's Wt.

    Derivation, per sample (B = batch size, σ = softmax):
      CE, probability fusion: P_y = a σ(z)_y + p0_y, z = 100 s
          ∂L/∂z = r (σ(z) − onehot(y)) / B,   r = a σ(z)_y / P_y   (r = 1 for CMM-only)
      CE, logit fusion: ∂L/∂z = a (σ(a z + z0) − onehot(y)) / B
      triplet: c = v̂ Tnᵀ, L = max(0, c_neg − c_y + m): ∂L/∂c = ±[active] / B
      Row-normalized T (Tn_j = T_j / |T_j|), for an output O = A Tnᵀ with upstream G:
          ∂L/∂T_j = (Gᵀ A)_j / |T_j| − (Σ_i G_ij O_ij) T_j / |T_j|²
      Row-normalized u (û = u/|u|): ∂L/∂u = (∂L/∂û − û (û·∂L/∂û)) / |u|,  ∂L/∂W = v̂ᵀ ∂L/∂u.
    """
    B = x.shape[0]
    u = ops.matmul(x, W) + x if W is not None else x
    u_norm = u.norm(dim=1, keepdim=True)
    u_hat = u / u_norm
    need_inv = cfg.triplet or cfg.normalize_T_in_s
    inv = T.norm(dim=1).reciprocal() if need_inv else None  # 1/|T_j|
    # One matmul gives both s (rows of û) and the triplet cosines (rows of v̂).
    A = torch.cat([u_hat, x]) if cfg.triplet else u_hat
    R = ops.linear(A, T)  # A Tᵀ
    s = R[:B] * inv if cfg.normalize_T_in_s else R[:B]

    # Cross-entropy: upstream gradient G_s = ∂L/∂s, [B, C]
    loss = None
    if cfg.cmm_only or cfg.fusion == "prob":
        p = torch.softmax(LOGIT_SCALE * s, dim=1)
        py = p.gather(1, y[:, None])
        if cfg.cmm_only:
            r = torch.full_like(py, LOGIT_SCALE / B)
            if want_loss:
                loss = -torch.log(py).mean()
        else:
            P_y = cfg.train_alpha * py + p0y[:, None]
            r = (cfg.train_alpha * LOGIT_SCALE / B) * py / P_y
            if want_loss:
                loss = -torch.log(P_y).mean()
        G_s = p.mul_(r).scatter_add_(1, y[:, None], -r)
    else:  # logit fusion
        z = torch.addmm(LOGIT_SCALE * s * cfg.train_alpha, x, T0.t(), alpha=LOGIT_SCALE)
        p = torch.softmax(z, dim=1)
        if want_loss:
            loss = -torch.log(p.gather(1, y[:, None])).mean()
        k = cfg.train_alpha * LOGIT_SCALE / B
        G_s = p.mul_(k).scatter_add_(1, y[:, None], torch.full((B, 1), -k, dtype=p.dtype, device=p.device))

    # Collect every row of R's upstream gradient, already divided by |T_j| where
    # the output was normalized, and the per-row norm correction coef_j.
    coef = None
    if cfg.normalize_T_in_s:
        coef = -(G_s * s).sum(0)
        G_s = G_s * inv
    G = G_s
    if cfg.triplet:
        cos = R[B:] * inv
        c_pos = cos.gather(1, y[:, None])
        c_neg, j_neg = cos.scatter(1, y[:, None], -float("inf")).max(dim=1, keepdim=True)
        hinge = c_neg - c_pos + cfg.margin
        act = (hinge > 0).to(x.dtype) / B
        if want_loss:
            loss = loss + hinge.clamp_min(0).mean()
        # ∂L/∂c is +act at the hardest negative and −act at the true class.
        G_c = torch.zeros_like(cos).scatter_(1, j_neg, act).scatter_(1, y[:, None], -act)
        c_coef = -(G_c * cos).sum(0)
        coef = c_coef if coef is None else coef + c_coef
        G = torch.cat([G_s, G_c * inv])

    gT = G.t() @ A
    if coef is not None:
        gT.addcmul_((coef * inv * inv)[:, None], T)

    if W is None:
        return loss, None, gT
    g_uhat = G_s @ T
    g_u = (g_uhat - u_hat * (u_hat * g_uhat).sum(1, keepdim=True)) / u_norm
    return loss, ops.outer(x, g_u), gT


class TorchLoop:
    """One run's tensors and optimizer; :meth:`run` does iterations t0..t1-1 (the same interface as KernelLoop)."""

    def __init__(self, x, y, T0, p0y, cfg, batches, lrs, adamw_kind: str | None = None):
        self.x, self.y, self.T0, self.p0y, self.cfg = x, y, T0, p0y, cfg
        self.batches, self.lrs = batches.to(x.device), lrs
        d = x.shape[1]
        self.T = T0.clone()
        # W is stored transposed (Wt contiguous, W = Wt.t() a view): x W is then
        # x Wtᵀ, the layout the linear kernels want. AdamW is elementwise, so the
        # layout changes nothing else.
        self.Wt = torch.zeros(d, d, dtype=x.dtype, device=x.device) if cfg.use_map else None
        self.params = [p for p in (self.Wt, self.T) if p is not None]
        self.opt = ops.AdamW(self.params, cfg.weight_decay, kind=adamw_kind)
        self.name = f"torch ({self.opt.kind} AdamW{', oneDNN' if ops.onednn_ok() and x.device.type == 'cpu' else ''})"

    def run(self, t0: int, t1: int, threads: int | None, want=()) -> dict:
        """Iterations t0..t1-1 with `threads` CPU threads; returns {iteration + 1: loss} for those in `want`."""
        cpu = self.x.device.type == "cpu"
        prev = torch.get_num_threads()
        if cpu and threads:
            torch.set_num_threads(threads)
        out = {}
        try:
            with torch.no_grad(), ops.flush_denormals(cpu):
                for t in range(t0, t1):
                    out.update(self._step(t, (t + 1) in want))
        finally:
            if cpu and threads:
                torch.set_num_threads(prev)
        return out

    def _step(self, t: int, want: bool) -> dict:
        b = self.batches[t]
        Wt = self.Wt
        loss, gW, gT = cmm_grads(
            Wt.t() if Wt is not None else None, self.T, self.T0, self.x[b], self.y[b], self.p0y[b], self.cfg, want
        )
        self.opt.step([gW.t(), gT] if Wt is not None else [gT], self.lrs[t])  # gW.t(): contiguous, laid out like Wt
        return {t + 1: float(loss)} if want else {}

    def weights(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        return (self.Wt.t().contiguous() if self.Wt is not None else None), self.T

    def close(self) -> None:
        pass
