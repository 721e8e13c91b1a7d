"""`cmm-cache bench fit`: time the trainer on synthetic features, quiet and under load.

* :func:`bench_fit` — one fit of a given size (and the plain autograd
  transcription with ``reference=True``), as before.
* :func:`bench_threads` — 1 thread, 2 threads and the default (chosen by
  timing while it runs), interleaved and repeated, on a quiet machine and/or
  with a CPU-bound process running beside it (:class:`BusyLoad`).
* :func:`bench_suite` — every figure of the README's speed section in one run:
  quiet and busy × 1/2 threads/default, the single-run time and the whole
  DTD-sized protocol (:mod:`cmm_cache.bench.protocol`).

Synthetic features have the real shapes (and so the real cost); their values
do not matter for speed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time

import torch

from cmm_cache.bench.protocol import bench_protocol
from cmm_cache.evaluation.metrics import evaluate_head
from cmm_cache.heads.base import normalize_rows
from cmm_cache.heads.cmm import CMMHead, Model
from cmm_cache.methods.cmm import ALPHA_GRID, select_alpha
from cmm_cache.methods.trainers import ops
from cmm_cache.methods.trainers.cmm import kernel
from cmm_cache.methods.trainers.cmm.trainer import Runtime, TrainConfig, fit_reference, train_cmm
from cmm_cache.util.device import resolve_device
from cmm_cache.util.parallel import usable_cores
from cmm_cache.util.versions import versions


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the figures were measured on: CPU model and count, torch's threads, the kernels in use."""

    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "load_average": _load(),
        "torch_threads": torch.get_num_threads(),
        "kernel": kernel.status(),
        "torch_path": ops.describe(torch.device("cpu")),
        "versions": versions(),
    }


def machine_line() -> str:
    """One line for a benchmark's output: CPU model, usable cores, 1-minute load average now, torch version."""

    load = _load()
    return (
        f"{cpu_model()}, {usable_cores()} cores, load average {'?' if load is None else f'{load:.2f}'} at the start, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def _load() -> float | None:
    """The 1-minute load average (how busy the machine was: other work makes every figure slower)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class BusyLoad:
    """`n` CPU-bound processes beside the benchmark (a busy machine), stopped on exit, also on Ctrl-C."""

    def __init__(self, n: int = 1):
        self.n, self.procs = n, []

    def __enter__(self):
        code = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.2)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []
        return False


def synthetic(classes: int, dim: int, shots: int, device="cpu", seed: int = 0):
    """(x, y, T0): 2·shots normalized samples per class around random class prototypes."""
    g = torch.Generator().manual_seed(seed)
    T0 = normalize_rows(torch.randn(classes, dim, generator=g))
    y = torch.arange(classes).repeat_interleave(shots * 2)  # two views per train image
    x = normalize_rows(T0[y] + 0.05 * torch.randn(len(y), dim, generator=g))
    return x.to(device), y.to(device), T0.to(device)


def _one_fit(x, y, T0, cfg: TrainConfig, threads: int | None = None) -> dict:
    t0 = time.perf_counter()
    r = train_cmm(x, y, T0, cfg, runtime=Runtime(threads=threads))
    return {"fit_seconds": time.perf_counter() - t0, "loop_seconds": r.seconds, "threads": r.threads, "result": r}


def bench_fit(
    classes=1000,
    dim=1024,
    shots=16,
    iterations=16000,
    batch_size=8,
    test_size=50000,
    threads=None,
    reference=False,
    reference_iterations=None,
    device="auto",
    repeat=1,
    log=print,
) -> dict:
    """Time the trainer (and optionally the plain transcription) on random features of a given size."""
    log = log or _quiet
    dev = resolve_device(device)
    x, y, T0 = synthetic(classes, dim, shots, dev)
    cfg = TrainConfig(iterations=iterations, batch_size=batch_size)
    out = {"device": str(dev), "classes": classes, "dim": dim, "shots": shots, "samples": int(len(x))}
    out.update(iterations=iterations, batch_size=batch_size, machine=machine())
    runs = [_one_fit(x, y, T0, cfg, threads) for _ in range(max(repeat, 1))]  # a shared machine is noisy: the fastest
    best = min(runs, key=lambda r: r["fit_seconds"])
    r = best.pop("result")
    out.update(best, engine=r.engine, fit_seconds_all=[a["fit_seconds"] for a in runs])
    out["iterations_per_second"] = iterations / out["loop_seconds"]
    log(
        f"fast fit   {classes} classes × {dim}-d, {len(x)} samples: {out['fit_seconds']:.2f} s "
        f"({out['iterations_per_second']:.0f} it/s) on {dev}, {r.engine}, threads {_threads_text(r.threads)}"
    )
    if test_size:
        out.update(_bench_eval(r, x, y, T0, classes, dim, test_size, dev, log))
    if reference:
        out.update(_bench_reference(x, y, T0, iterations, batch_size, reference_iterations, dev, out, log))
    return out


def _threads_text(summary: dict) -> str:
    per = summary.get("iterations_per_threads", {})
    if len(per) <= 1:
        return str(next(iter(per), summary.get("final")))
    total = sum(per.values())
    return "chosen by timing: " + ", ".join(f"{n}: {100 * i / total:.0f} %" for n, i in sorted(per.items()))


def _bench_eval(r, x, y, T0, classes, dim, test_size, dev, log) -> dict:
    g = torch.Generator().manual_seed(1)
    idx = torch.arange(test_size) % classes
    xt = normalize_rows(T0.cpu()[idx] + 0.05 * torch.randn(test_size, dim, generator=g)).to(dev)
    model = Model(r.W, r.T, T0)
    t0 = time.perf_counter()
    alpha, _ = select_alpha(model, x[: classes * 4 * 2 : 2], y[: classes * 4 * 2 : 2], ALPHA_GRID)
    evaluate_head(CMMHead(model, alpha), xt, idx.to(dev), zero_shot_T0=model.T0)
    secs = time.perf_counter() - t0
    log(f"alpha search on {classes * 4} val + test evaluation on {test_size} images: {secs:.2f} s")
    return {"eval_seconds": secs, "eval_test_size": test_size}


def _bench_reference(x, y, T0, iterations, batch_size, reference_iterations, dev, out, log) -> dict:
    n = reference_iterations or iterations
    prev = torch.get_num_threads()
    try:
        _, _, secs = fit_reference(x, y, T0, TrainConfig(iterations=n, batch_size=batch_size))
    finally:
        torch.set_num_threads(prev)
    ref = {"reference_iterations_timed": n, "reference_seconds": secs * iterations / n}
    ref.update(reference_extrapolated=n != iterations, reference_iterations_per_second=n / secs)
    ref["speedup"] = ref["reference_seconds"] / out["loop_seconds"]
    log(
        f"reference  {ref['reference_seconds']:.2f} s ({ref['reference_iterations_per_second']:.0f} it/s)"
        f"{f' extrapolated from {n} iterations' if n != iterations else ''}; speed-up ×{ref['speedup']:.2f}"
    )
    return ref


def bench_threads(
    classes=47,
    dim=1024,
    shots=16,
    iterations=16000,
    choices=(1, 2, None),
    conditions=("quiet", "busy"),
    busy_procs=1,
    repeat=1,
    log=print,
) -> dict:
    """Fit seconds for each thread choice (None: the default) in each condition; min over `repeat` interleaved rounds.

    Within a condition the choices alternate (1, 2, default, 1, 2, default, ...),
    so a change of load during the benchmark hits all of them alike.
    """
    log = log or _quiet
    x, y, T0 = synthetic(classes, dim, shots)
    out = {"classes": classes, "dim": dim, "shots": shots, "iterations": iterations, "busy_procs": busy_procs}
    for cond in conditions:
        times: dict[str, list[float]] = {_name(c): [] for c in choices}
        picks = {}
        with BusyLoad(busy_procs) if cond == "busy" else contextlib.nullcontext():
            for _ in range(max(repeat, 1)):
                for c in choices:
                    r = _one_fit(x, y, T0, TrainConfig(iterations=iterations), threads=c)
                    times[_name(c)].append(r["fit_seconds"])
                    if c is None:
                        picks = r["threads"]
                    log(f"  {cond:5s} {_name(c):>9s}: {r['fit_seconds']:6.2f} s")
        best = {k: min(v) for k, v in times.items()}
        fixed = [v for k, v in best.items() if k != "default"]
        row = {"seconds": best, "all": times, "default_threads": picks, "load_average_after": _load()}
        if "default" in best and fixed:
            row["default_vs_best_fixed"] = best["default"] / min(fixed)
        out[cond] = row
        line = ", ".join(f"{k} {v:.2f} s" for k, v in best.items())
        extra = (
            f" (default / best fixed = {row['default_vs_best_fixed']:.3f})" if "default_vs_best_fixed" in row else ""
        )
        log(f"{cond}: {line}{extra}; load average {row['load_average_after']}")
    return out


def _name(choice) -> str:
    return "default" if choice is None else f"{choice} thread{'s' if choice > 1 else ''}"


def bench_suite(
    classes=47, dim=1024, iterations=16000, repeat=1, busy_procs=1, protocol=True, protocol_kw=None, log=print
) -> dict:
    """Every figure the README's speed section quotes, in one run (default: DTD-sized, 47 classes × 1024-d)."""
    log = log or _quiet

    out = {"machine": machine()}
    m = out["machine"]
    k = m["kernel"]
    loop = f"compiled CPU loop ({k['reason']})" if k["available"] else f"torch path (no compiled loop: {k['reason']})"
    log(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']}; trainer: {loop}")
    log(f"load average before: {m['load_average']} (anything well above 0 means other work is running)")
    log(f"single run ({classes} classes × {dim}-d, 16 shots × 2 views, {iterations} iterations), fit seconds:")
    out["threads"] = bench_threads(classes, dim, 16, iterations, repeat=repeat, busy_procs=busy_procs, log=log)
    out["single_run_seconds"] = out["threads"]["quiet"]["seconds"]["default"]
    log(f"single run (quiet, default threads): {out['single_run_seconds']:.2f} s")
    if protocol:
        out["protocol"] = bench_protocol(
            classes=classes, dim=dim, iterations=iterations, log=log, **(protocol_kw or {})
        )
    return out


def _quiet(*args, **kwargs) -> None:
    pass
