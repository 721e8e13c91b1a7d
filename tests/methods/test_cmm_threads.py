"""The thread count is chosen by timing (simulated clocks here), and independent fits run side by side."""

import functools
import multiprocessing as mp
import os
import random

import pytest
import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.base import normalize_rows
from cmm_cache.methods.trainers.cmm.threads import ThreadChooser, candidates
from cmm_cache.methods.trainers.cmm.trainer import Runtime, TrainConfig, train_cmm
from cmm_cache.util.parallel import call, parallel_map


def _simulate(chooser, seconds_per_it, iterations=16000, report_every=160):
    """Drive a chooser like train_cmm() does, with a made-up cost per iteration; returns (total seconds, chooser)."""
    t, total = 0, 0.0
    while t < iterations:
        threads, length = chooser.next()
        end = min(t + length, (t // report_every + 1) * report_every, iterations)
        secs = sum(seconds_per_it(threads, i) for i in range(t, end))
        chooser.record(threads, end - t, secs)
        total, t = total + secs, end
    return total, chooser


def _fixed_cost(rates):
    return lambda threads, i: rates[threads]


@pytest.mark.parametrize(
    "rates",
    [
        {1: 0.50e-3, 2: 0.31e-3},  # quiet: two threads faster
        {1: 0.60e-3, 2: 1.80e-3},  # busy: a descheduled peer makes two threads 3× slower
        {1: 0.50e-3, 2: 0.49e-3},  # a tie
    ],
)
def test_chooser_is_within_ten_percent_of_the_best_fixed_choice(rates):
    total, ch = _simulate(ThreadChooser([1, 2]), _fixed_cost(rates))
    best = 16000 * min(rates.values())
    assert total <= 1.10 * best
    if abs(rates[1] - rates[2]) > 0.1 * min(rates.values()):
        assert ch.summary()["final"] == min(rates, key=rates.get)


def test_chooser_follows_load_that_starts_and_stops_during_the_run():
    def cost(threads, i):
        busy = 5000 <= i < 11000
        return {1: 0.6e-3, 2: 1.8e-3}[threads] if busy else {1: 0.5e-3, 2: 0.3e-3}[threads]

    total, ch = _simulate(ThreadChooser([1, 2]), cost)
    oracle = sum(min(cost(1, i), cost(2, i)) for i in range(16000))
    assert total <= 1.15 * oracle
    per = ch.summary()["iterations_per_threads"]
    assert per[1] > 4000 and per[2] > 7000  # it used each where it was the better one


@pytest.mark.parametrize("rates", [{1: 0.51e-3, 2: 0.78e-3}, {1: 0.59e-3, 2: 0.27e-3}])
def test_chooser_keeps_within_ten_percent_when_timings_are_noisy(rates):
    """Speed off by a random factor that changes every 50 iterations (lognormal, σ = 0.3, independent per
    thread count): a machine where other work comes and goes."""
    ratios = []
    for seed in range(10):
        rng = random.Random(seed)
        noise = {n: [rng.lognormvariate(0, 0.3) for _ in range(16000 // 50 + 1)] for n in rates}
        total, _ = _simulate(ThreadChooser([1, 2]), lambda n, i, f=noise: rates[n] * f[n][i // 50])
        best = min(sum(rates[n] * noise[n][i // 50] for i in range(16000)) for n in rates)
        ratios.append(total / best)
    assert sum(ratios) / len(ratios) <= 1.10


def test_chooser_with_one_option_never_probes():
    ch = ThreadChooser([1])
    assert ch.next() == (1, 1 << 30)
    ch.record(1, 500, 0.1)
    assert ch.summary() == {"options": [1], "final": 1, "iterations_per_threads": {1: 500}}


def test_candidates_respect_a_fixed_count_and_the_usable_cores(monkeypatch):
    assert candidates(torch.device("cpu"), fixed=3) == [3]
    assert candidates(torch.device("cuda")) == [1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert candidates(torch.device("cpu")) == [1, 2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert candidates(torch.device("cpu")) == [1]


def test_fit_reports_its_thread_choice():
    g = torch.Generator().manual_seed(0)
    T0 = normalize_rows(torch.randn(4, 8, generator=g))
    y = torch.arange(4).repeat_interleave(3)
    x = normalize_rows(torch.randn(len(y), 8, generator=g))
    r = train_cmm(x, y, T0, TrainConfig(iterations=300), runtime=Runtime(threads=1))
    assert r.threads == {"options": [1], "final": 1, "iterations_per_threads": {1: 300}}
    r = train_cmm(x, y, T0, TrainConfig(iterations=300))
    assert sum(r.threads["iterations_per_threads"].values()) == 300


# ----------------------------------------------------------------------------
# Independent runs in worker processes


def _no_workers_left():
    return [p for p in mp.active_children() if p.is_alive()] == []


def test_parallel_map_keeps_the_order_and_reports_each_result():
    seen = []
    out = parallel_map(abs, [-3, 1, -2, 5, -8], processes=2, on_result=lambda i, r: seen.append((i, r)))
    assert out == [3, 1, 2, 5, 8]
    assert sorted(seen) == [(0, 3), (1, 1), (2, 2), (3, 5), (4, 8)]
    assert _no_workers_left()


def test_parallel_map_raises_the_jobs_own_error_and_stops_the_workers():
    with pytest.raises(ValueError, match="invalid literal") as e:
        parallel_map(int, ["1", "x", "3", "4"], processes=2)
    assert any("parallel job 1" in n for n in getattr(e.value, "__notes__", ["parallel job 1"]))
    assert _no_workers_left()


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="died \\(exit code 3\\)"):
        parallel_map(os._exit, [3, 3], processes=2)
    assert _no_workers_left()


def test_interrupting_the_caller_terminates_the_workers():
    def interrupt(i, r):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel_map(abs, [-1, -2, -3, -4], processes=2, on_result=interrupt)
    assert _no_workers_left()


def _jobs():
    g = torch.Generator().manual_seed(0)
    T0 = normalize_rows(torch.randn(6, 16, generator=g))
    y = torch.arange(6).repeat_interleave(4)
    x = normalize_rows(T0[y] + 0.5 * torch.randn(len(y), 16, generator=g))
    return [functools.partial(train_cmm, x, y, T0, TrainConfig(iterations=200), seed=s) for s in (1, 2, 3)]


def test_fits_in_worker_processes_equal_fitting_one_after_another():
    jobs = _jobs()
    par = parallel_map(call, jobs, 2)
    seq = [j() for j in jobs]
    assert [r.iterations for r in par] == [200, 200, 200]
    assert all(r.threads["final"] == 1 for r in par)  # one thread per worker (threads_per_process=1)
    for a, b in zip(par, seq):
        torch.testing.assert_close(a.W, b.W, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a.T, b.T, rtol=1e-6, atol=1e-8)
    assert not torch.equal(par[0].W, par[1].W)  # seeds differ


def test_a_bad_config_in_a_worker_is_raised_clearly():
    jobs = _jobs()
    jobs[2].args[3].fusion = "max"  # every job shares one TrainConfig: the third is the first to run it there
    with pytest.raises(CmmError, match="Unknown fusion"):
        parallel_map(call, jobs, 2)
    assert _no_workers_left()
