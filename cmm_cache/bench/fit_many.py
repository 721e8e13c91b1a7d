"""Independent fits side by side: one process per core, one thread each.

A few-shot protocol is many independent runs (5 shot counts × 3 seeds). On a
CPU, two runs in two processes with one thread each use both cores without
ever waiting for each other, which beats one process running the runs in turn
with two threads (where every step's parallel pass waits for the slower
thread). :func:`parallel_map` is the primitive; :func:`fit_many` applies it to
:func:`cmm_cache.fit.fit`.

Results come back in the order of the jobs. Each fit is deterministic (its
batches come from its own seed; the compiled loop's numbers do not depend on
the thread count), so they equal a sequential run's. Errors and Ctrl-C: see
:mod:`cmm_cache.parallel`. Each worker pays the import of torch once (~1-2 s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .fit import FitConfig, FitResult
from .parallel import default_processes, parallel_map, usable_cores

__all__ = ["FitJob", "fit_many", "parallel_map", "default_processes", "usable_cores"]


@dataclass
class FitJob:
    """One independent fit: the arguments of :func:`cmm_cache.fit.fit` (CPU tensors)."""

    x: torch.Tensor
    y: torch.Tensor
    T0: torch.Tensor
    cfg: FitConfig
    batches: torch.Tensor | None = None
    log_every: int = 500


def _fit_job(job: FitJob) -> FitResult:
    from .fit import fit

    return fit(job.x, job.y, job.T0, job.cfg, log_every=job.log_every, batches=job.batches)


def fit_many(
    jobs: Sequence[FitJob],
    processes: int | None = None,
    on_result: Callable[[int, FitResult], None] | None = None,
) -> list[FitResult]:
    """Run independent fits; results in the order of `jobs`.

    With several processes each fit runs with one thread (unless its config
    fixes another count); with one process the fits run here in turn and
    choose their threads as :func:`cmm_cache.fit.fit` does.
    """
    jobs = list(jobs)
    processes = default_processes(len(jobs)) if processes is None else max(1, int(processes))
    share = 1
    if processes > 1 and len(jobs) > 1:
        share = max(1, usable_cores() // min(processes, len(jobs)))
        jobs = [replace(j, cfg=replace(j.cfg, threads=j.cfg.threads or share)) for j in jobs]
    return parallel_map(_fit_job, jobs, processes, on_result, threads_per_process=share)
