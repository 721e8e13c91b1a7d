"""``linear-probe``: image-only multinomial logistic regression, L2 strength chosen on val.

Source: CLIP's linear-probe protocol (Radford et al., ICML 2021, App. A.3) as
CoOp runs it on few-shot subsets — KaiyangZhou/CoOp ``lpclip/linear_probe.py``
at commit 61a9cd3cce4f1383c4bc0918203cf001fe381a0f:

* classifier: scikit-learn ``LogisticRegression(solver="lbfgs", penalty="l2",
  C=c, max_iter=1000)``, i.e. it minimizes
  ``mean_i CE(x_i Wᵀ + b, y_i) + ‖W‖² / (2 c N)`` (bias not penalized,
  gradient tolerance 1e-4, L-BFGS memory 10);
* search: c ∈ [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6] on val (first best wins),
  then 8 rounds of their "binary search": fit c_left = peak/10 and
  c_right = 10·peak, keep the better (ties: left), halve the interval in log10
  space towards it; the last round's winner is the classifier.

Written here (no scikit-learn): full-batch L-BFGS in torch with strong-Wolfe
line search on the same objective. Two exact shortcuts keep it fast and do
change nothing: with fewer samples than dimensions the problem is solved in an
orthonormal basis of the samples' span (the L2 optimum lies in it, and L-BFGS
from zero is rotation-equivariant, so the iterates are the same), and a c the
search revisits is not fitted twice. Every fit starts from zero, as
scikit-learn's does (with its gradient tolerance a warm start would stop
early at another point). Inputs are the L2-normalized features every method
here sees (CoOp feeds raw ones; only the scale of c differs, and the
search spans twelve decades). Every view of a train image is a sample.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cmm_cache.heads.linear import LinearHead
from cmm_cache.methods.base import FitData, Method, MethodResult, scoped
from cmm_cache.methods.registry import register_method
from cmm_cache.methods.search import select_scored

C_START = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # CoOp's search initialization, in their order


def logreg_objective(x, y, W, b, C: float) -> torch.Tensor:
    """The scikit-learn objective: mean cross-entropy + ‖W‖² / (2 C N) (bias unpenalized)."""
    return F.cross_entropy(x @ W.t() + b, y) + (W * W).sum() / (2.0 * C * len(x))


def fit_logreg(x, y, num_classes, C, iterations=1000, tol=1e-4, init=None):
    """Minimize :func:`logreg_objective` by L-BFGS from `init` (else zero). Returns (W, b, iterations run)."""
    d = x.shape[1]
    theta = torch.zeros(num_classes, d + 1, dtype=x.dtype, device=x.device) if init is None else init.clone()
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=int(iterations),
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)  # bias as a last feature
    scale = 1.0 / (2.0 * C * len(x))

    def closure():  # logreg_objective, with one contiguous matmul for weights and bias
        opt.zero_grad()
        W = theta[:, :d]
        loss = F.cross_entropy(x1 @ theta.t(), y) + scale * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    n_iter = int(opt.state[theta].get("n_iter", 0))
    theta = theta.detach()
    return theta[:, :d], theta[:, d], n_iter


class _Path:
    """Fits at several c on one problem, each from zero, memoized by c."""

    def __init__(self, x, y, x_val, y_val, num_classes, iterations, tol):
        self.Q = None
        if x.shape[0] < x.shape[1]:  # exact: solve in the span of the samples
            self.Q = torch.linalg.qr(x.t())[0]
            x, x_val = x @ self.Q, x_val @ self.Q
        self.x, self.y, self.x_val, self.y_val = x, y, x_val, y_val
        self.C, self.iterations, self.tol = num_classes, iterations, tol
        self.fits: dict[float, tuple] = {}  # log10 c -> (theta, val acc)
        self.total_iterations = 0

    def val_acc(self, log_c: float) -> float:
        key = round(log_c, 9)
        if key not in self.fits:
            W, b, n = fit_logreg(self.x, self.y, self.C, 10.0**key, self.iterations, self.tol)
            self.total_iterations += n
            pred = (self.x_val @ W.t() + b).argmax(1)
            acc = 100.0 * float((pred == self.y_val).sum()) / max(len(self.y_val), 1)
            self.fits[key] = (torch.cat([W, b[:, None]], 1), acc)
        return self.fits[key][1]

    def head(self, log_c: float) -> LinearHead:
        theta = self.fits[round(log_c, 9)][0]
        d = theta.shape[1] - 1
        W, b = theta[:, :d], theta[:, d]
        return LinearHead(W @ self.Q.t() if self.Q is not None else W, b)


def coop_search(val_acc, start=C_START, steps: int = 8) -> tuple[float, list]:
    """CoOp's c search on val: returns (log10 of the chosen c, [(c, val acc), ...] in the order tried).

    `val_acc(log10_c)` fits at c and returns the val accuracy.
    """
    tried = []

    def acc(log_c):
        a = val_acc(log_c)
        tried.append((10.0**log_c, a))
        return a

    logs = [math.log10(c) for c in start]
    accs = [acc(lc) for lc in logs]
    peak = select_scored(logs, accs).value  # first best, as their np.argmax
    left, right = peak - 1.0, peak + 1.0
    final = peak
    for _ in range(steps):
        a_left, a_right = acc(left), acc(right)
        mid = 0.5 * (left + right)
        final = select_scored([left, right], [a_left, a_right]).value  # right only when strictly better
        if final == right:
            left = mid
        else:
            right = mid
    return final, tried


@scoped(single_thread=True)
def fit(data: FitData, options: dict, progress=None) -> MethodResult:
    t0 = time.perf_counter()
    path = _Path(
        data.x_train, data.y_train, data.x_val, data.y_val, data.num_classes, options["iterations"], options["tol"]
    )
    if options["C"] is not None:  # fixed strength: no search
        log_c, tried = math.log10(options["C"]), [(options["C"], path.val_acc(math.log10(options["C"])))]
    else:
        log_c, tried = coop_search(path.val_acc, tuple(options["search_start"]), int(options["search_steps"]))
    head = path.head(log_c)
    return MethodResult(
        head=head,
        hparams={"C": 10.0**log_c},
        val_acc=path.fits[round(log_c, 9)][1],
        fit_seconds=time.perf_counter() - t0,
        iterations=path.total_iterations,
        extra={"search": [{"C": c, "val_acc": a} for c, a in tried], "fits": len(path.fits)},
    )


METHOD = register_method(
    Method(
        name="linear-probe",
        fit=fit,
        defaults={
            "C": None,  # inverse L2 strength; None: CoOp's search on val
            "search_start": list(C_START),
            "search_steps": 8,
            "iterations": 1000,  # L-BFGS iterations per fit (scikit-learn's max_iter)
            "tol": 1e-4,
        },
        summary="Image-only logistic regression (L-BFGS), L2 strength by CoOp's val search",
        source="Radford et al. 2021 linear probe; KaiyangZhou/CoOp lpclip/linear_probe.py @ 61a9cd3",
        trained=True,
        budget="iterations",
        rank=10,
        cost=4.0,
    )
)
