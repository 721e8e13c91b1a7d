"""Independent fits side by side: one process per core, one thread each.

A few-shot protocol is many independent runs (5 shot counts × 3 seeds). On a
CPU, two runs in two processes with one thread each use both cores without
ever waiting for each other, which beats one process running the runs in turn
with two threads (where every step's parallel pass waits for the slower
thread). :func:`parallel_map` is the primitive; :func:`fit_many` applies it to
:func:`cmm_cache.fit.fit`.

* Results come back in the order of the inputs; each fit is deterministic
  (its batches come from its own seed; the compiled loop's numbers do not
  depend on the thread count), so the results equal a sequential run's.
* An error in one job stops the others and is raised in the caller as the
  original exception, with the failing job's index noted.
* Ctrl-C: the workers ignore SIGINT; the caller terminates them and re-raises
  KeyboardInterrupt, so nothing keeps running in the background. A worker
  that dies (killed, out of memory) is an error too, never a hang.

Workers are started with the "spawn" method (a fresh interpreter: safe with
threads and OpenMP in the parent) and pay the import of torch once each.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import wait

import torch

from .fit import FitConfig, FitResult


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_processes(n_jobs: int) -> int:
    """One process per usable core, never more than there are jobs."""
    return max(1, min(n_jobs, usable_cores()))


def _worker(conn, threads: int) -> None:
    """Run jobs sent over `conn` until told to stop; send back (index, ok, result or exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(threads)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        i, fn, item = msg
        try:
            conn.send((i, True, fn(item)))
        except Exception as e:  # noqa: BLE001 — re-raised in the parent, with the job's index
            if hasattr(e, "add_note"):
                e.add_note(f"(raised in parallel job {i})")
            try:
                conn.send((i, False, e))
            except Exception:  # noqa: BLE001 — an exception that does not pickle: send its text
                conn.send((i, False, RuntimeError(f"parallel job {i} failed: {type(e).__name__}: {e}")))


def parallel_map(
    fn: Callable,
    items: Sequence,
    processes: int | None = None,
    on_result: Callable[[int, object], None] | None = None,
    threads_per_process: int = 1,
) -> list:
    """[fn(item) for item in items], in `processes` worker processes (None: one per core).

    `fn` must be picklable (a module-level function). `on_result(index,
    result)` is called in the caller as each job finishes (in completion
    order). With one process (or one item) everything runs here, in order.
    """
    items = list(items)
    processes = default_processes(len(items)) if processes is None else max(1, int(processes))
    if processes == 1 or len(items) <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if on_result is not None:
                on_result(i, out[-1])
        return out
    ctx = mp.get_context("spawn")
    workers = []  # (process, connection)
    try:
        for _ in range(min(processes, len(items))):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(there, threads_per_process), daemon=True)
            proc.start()
            there.close()
            workers.append((proc, here))
        return _dispatch(workers, fn, items, on_result)
    except BaseException:  # an error or Ctrl-C: stop every worker now
        for proc, _ in workers:
            if proc.is_alive():
                proc.terminate()
        raise
    finally:
        for proc, conn in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


def _dispatch(workers, fn, items, on_result) -> list:
    todo = list(enumerate(items))[::-1]
    results: dict[int, object] = {}
    busy: dict = {}  # connection -> (process, job index)
    idle = list(workers)
    while todo or busy:
        while todo and idle:
            proc, conn = idle.pop()
            i, item = todo.pop()
            _talk(proc, i, conn.send, (i, fn, item))
            busy[conn] = (proc, i)
        ready = wait(list(busy) + [p.sentinel for p, _ in busy.values()])
        for conn in [c for c in busy if c in ready]:
            proc, i = busy.pop(conn)
            i, ok, value = _talk(proc, i, conn.recv)
            if not ok:
                raise value
            results[i] = value
            idle.append((proc, conn))
            if on_result is not None:
                on_result(i, value)
        for conn, (proc, i) in list(busy.items()):
            if proc.sentinel in ready and not conn.poll():
                raise _died(proc, i)
    for _, conn in workers:
        conn.send(None)
    return [results[i] for i in range(len(items))]


def _died(proc, i) -> RuntimeError:
    proc.join(1)
    return RuntimeError(
        f"A worker process died (exit code {proc.exitcode}) while running parallel job {i}; "
        "its output above says why (run with processes=1 to see the error in this process)."
    )


def _talk(proc, i, op, *args):
    """conn.send/recv, turning a dead worker's broken pipe into one clear error."""
    try:
        return op(*args)
    except (EOFError, OSError) as e:
        raise _died(proc, i) from e


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
