"""`parallel_map`: independent jobs in worker processes, results in order, errors and Ctrl-C handled.

Workers are fresh interpreters (``python -m cmm_cache.util.parallel``) that talk
pickles over their stdin/stdout; anything they print goes to stderr. Unlike
multiprocessing's "spawn", this never re-runs the caller's main script in the
workers, so it works from any script, a notebook or stdin, guarded by
``if __name__ == "__main__"`` or not; and unlike "fork" it is safe with the
threads and OpenMP pools of a process that already ran torch.

* Results come back in the order of the inputs.
* An error in one job stops the others and is raised in the caller as the
  original exception, with the failing job's index noted.
* Ctrl-C: the workers ignore SIGINT; the caller kills them and re-raises
  KeyboardInterrupt, so nothing keeps running in the background. A worker
  that dies (killed, out of memory) is an error too, never a hang.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_processes(n_jobs: int) -> int:
    """One process per usable core, never more than there are jobs."""
    return max(1, min(n_jobs, usable_cores()))


class _Worker:
    def __init__(self, threads: int):
        # torch reads OMP_NUM_THREADS when it starts, so a worker need not import it before its first job
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS=str(threads))
        env["MKL_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cmm_cache.util.parallel"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.job: int | None = None

    def send(self, msg) -> None:
        try:
            pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise self.died() from e

    def recv(self):
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            raise self.died() from e

    def died(self) -> RuntimeError:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(
            f"A worker process died (exit code {code}) while running parallel job {self.job}; "
            "its output above says why (run with processes=1 to see the error in this process)."
        )

    def stop(self, kill: bool) -> None:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def call(job):
    """``job()``: lets ``parallel_map(call, [functools.partial(f, ...), ...])`` run any picklable call in a worker."""
    return job()


def parallel_map(
    fn: Callable,
    items: Sequence,
    processes: int | None = None,
    on_result: Callable[[int, object], None] | None = None,
    threads_per_process: int = 1,
) -> list:
    """[fn(item) for item in items], in `processes` worker processes (None: one per core).

    `fn` and the items must be picklable (a module-level function, plain data
    or tensors). `on_result(index, result)` is called in the caller as each
    job finishes (in completion order). With one process (or one item)
    everything runs here, in order.
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
    workers: list[_Worker] = []
    ok = False
    try:
        workers = [_Worker(threads_per_process) for _ in range(min(processes, len(items)))]
        out = _dispatch(workers, fn, items, on_result)
        ok = True
        return out
    finally:  # on an error or Ctrl-C: kill every worker now
        for w in workers:
            w.stop(kill=not ok)


def _dispatch(workers: list[_Worker], fn, items, on_result) -> list:
    todo = list(enumerate(items))[::-1]
    results: dict[int, object] = {}
    idle, busy = list(workers), {}  # busy: stdout file -> worker
    while todo or busy:
        while todo and idle:
            w = idle.pop()
            w.job, item = todo.pop()
            w.send((w.job, fn, item))
            busy[w.proc.stdout] = w
        for f in wait(list(busy)):
            w = busy.pop(f)
            i, ok, value = w.recv()
            if not ok:
                raise value
            results[i] = value
            idle.append(w)
            if on_result is not None:
                on_result(i, value)
    for w in workers:
        w.send(None)
    return [results[i] for i in range(len(items))]


def _serve() -> None:
    """The worker: run (index, fn, item) jobs from stdin until None; answer (index, ok, result or exception)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints (also from C) go to stderr, not into the pipe
    while True:
        try:
            msg = pickle.load(inp)
        except EOFError:
            return
        if msg is None:
            return
        i, fn, item = msg
        try:
            answer = (i, True, fn(item))
        except Exception as e:  # noqa: BLE001 — re-raised in the caller, with the job's index
            if hasattr(e, "add_note"):
                e.add_note(f"(raised in parallel job {i})")
            answer = (i, False, e)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 — an exception or result that does not pickle: send its text
            data = pickle.dumps((i, False, RuntimeError(f"parallel job {i}: {type(e).__name__}: {e}")))
        out.write(data)
        out.flush()


if __name__ == "__main__":
    _serve()
