"""Every implementation of the trainer gives the same numbers: compiled CPU loop, torch path, portable path.

The compiled loop (cmm_loop.c) is checked against the torch path on random
data (one AdamW step, then short runs over every option), and the torch path
against the autograd transcription in test_fit.py, so all three agree with
the equations. Where no compiler is available, the compiled-loop tests skip
and the fallback tests still run.
"""

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmm_cache.heads.base import normalize_rows
from cmm_cache.methods.trainers import ops as fit_ops
from cmm_cache.methods.trainers.cmm import kernel as cpu_kernel
from cmm_cache.methods.trainers.cmm.trainer import Runtime, TrainConfig, draw_batches, fit_reference, train_cmm

OPTIONS = list(itertools.product([True, False], [True, False], [False, True], [False, True], ["prob", "logit"]))


@pytest.fixture
def kernel():
    lib = cpu_kernel.load()
    if lib is None:
        pytest.skip(f"no compiled CPU loop here: {cpu_kernel.status()['reason']}")
    return lib


@pytest.fixture
def fresh_probes():
    """Probe and build again under this test's environment; afterwards the memos are as they were."""
    probed, state = dict(fit_ops._probed), dict(cpu_kernel._state)
    fit_ops.forget()
    cpu_kernel.forget()
    yield
    fit_ops.forget()
    cpu_kernel.forget()
    fit_ops._probed.update(probed)
    cpu_kernel._state.update(state)


def _data(C=9, d=40, per_class=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    T0 = normalize_rows(torch.randn(C, d, generator=g, dtype=torch.float64))
    y = torch.arange(C).repeat_interleave(per_class)
    x = normalize_rows(T0[y] + 0.8 * torch.randn(len(y), d, generator=g, dtype=torch.float64))
    return x.to(dtype), y, T0.to(dtype)


def _close(a, b, rtol=2e-4, atol=2e-6):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def test_one_adamw_step_of_the_kernel_equals_the_torch_path(kernel):
    """Step one from W = 0 through the fused W pass: the same W, T as gradients + AdamW in torch."""
    x, y, T0 = _data(d=48)
    cfg = TrainConfig(iterations=1, warmup=1, lr=1e-2)
    k = train_cmm(x, y, T0, cfg, runtime=Runtime(engine="kernel"))
    t = train_cmm(x.double(), y, T0.double(), cfg, runtime=Runtime(engine="torch"))
    assert k.engine == "compiled CPU loop" and t.engine.startswith("torch")
    assert k.W.abs().max() > 1e-3  # one step at lr 1e-2 moves W visibly
    _close(k.W, t.W)
    _close(k.T, t.T)


@pytest.mark.parametrize("use_map,triplet,norm_T,cmm_only,fusion", OPTIONS)
def test_short_kernel_run_equals_torch_path(kernel, use_map, triplet, norm_T, cmm_only, fusion):
    x, y, T0 = _data()
    cfg = TrainConfig(
        iterations=40,
        warmup=5,
        lr=3e-3,
        use_map=use_map,
        triplet=triplet,
        normalize_T_in_s=norm_T,
        cmm_only=cmm_only,
        fusion=fusion,
        train_alpha=0.7,
    )
    k = train_cmm(x, y, T0, cfg, runtime=Runtime(engine="kernel"), log_every=20)
    t = train_cmm(x.double(), y, T0.double(), cfg, runtime=Runtime(engine="torch"), log_every=20)
    assert not torch.equal(k.T, T0)
    _close(k.T, t.T)
    if use_map:
        _close(k.W, t.W)
    else:
        assert k.W is None
    for (i, a), (j, b) in zip(k.losses, t.losses):  # the loss it reports is the loss of that iteration
        assert i == j and a == pytest.approx(b, rel=1e-4)


def test_kernel_follows_the_autograd_transcription(kernel):
    x, y, T0 = _data(C=7, d=32)
    cfg = TrainConfig(iterations=60, warmup=5, lr=1e-2)
    k = train_cmm(x, y, T0, cfg, runtime=Runtime(engine="kernel"))
    W, T, _ = fit_reference(x.double(), y, T0.double(), cfg)
    _close(k.W, W, rtol=1e-3, atol=1e-5)
    _close(k.T, T, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 5, 8, 16])
def test_kernel_takes_any_batch_size_and_odd_sizes(kernel, batch_size):
    x, y, T0 = _data(C=5, d=19)  # d not a multiple of the vector width
    cfg = TrainConfig(iterations=30, warmup=3, lr=3e-3, batch_size=batch_size)
    k = train_cmm(x, y, T0, cfg, runtime=Runtime(engine="kernel"))
    t = train_cmm(x.double(), y, T0.double(), cfg, runtime=Runtime(engine="torch"))
    _close(k.W, t.W)
    _close(k.T, t.T)


def test_kernel_gives_identical_bits_for_any_thread_count(kernel):
    """Every parallel pass has a fixed chunking, so the thread count (even switching mid-run) changes nothing."""
    from cmm_cache.methods.trainers.cmm.torch_loop import clip_prob_true
    from cmm_cache.methods.trainers.cmm.trainer import lr_schedule

    x, y, T0 = _data(C=70, d=1024, per_class=2)  # C·d large enough that the T passes are split too
    cfg = TrainConfig(iterations=12, warmup=2, lr=1e-3)
    batches, lrs = draw_batches(len(x), cfg.iterations, cfg.batch_size, 1), lr_schedule(cfg)

    def run(plan):
        loop = cpu_kernel.KernelLoop(kernel, x, y, clip_prob_true(x, y, T0), T0, cfg)
        loop.set_schedule(batches, lrs)
        for t0, t1, threads in plan:
            loop.run(t0, t1, threads)
        W, T = loop.weights()
        loop.close()
        return W, T

    one = run([(0, 12, 1)])
    assert not torch.equal(one[1], T0)
    for plan in ([(0, 12, 2)], [(0, 4, 1), (4, 8, 2), (8, 12, 1)], [(0, 5, 2), (5, 12, 4)]):
        W, T = run(plan)
        assert torch.equal(W, one[0]) and torch.equal(T, one[1]), plan


def test_kernel_given_batches_equals_torch_path_over_segments(kernel):
    """Passing batches explicitly and cutting the run into many segments changes nothing."""
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=50, warmup=5, lr=3e-3)
    b = draw_batches(len(x), cfg.iterations, cfg.batch_size, seed=7)
    k = train_cmm(x, y, T0, cfg, batches=b, runtime=Runtime(engine="kernel"), log_every=7)
    t = train_cmm(x.double(), y, T0.double(), cfg, batches=b, runtime=Runtime(engine="torch"))
    _close(k.W, t.W)
    _close(k.T, t.T)
    assert [i for i, _ in k.losses] == [7, 14, 21, 28, 35, 42, 49, 50]


def test_kernel_is_cached_on_disk_by_content(kernel, fresh_probes, tmp_path, monkeypatch):
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "c"))
    assert cpu_kernel.status()["reason"] == "built"
    files = sorted((tmp_path / "c" / "kernels").iterdir())  # the library and its sha256, recorded at build
    libs = [p for p in files if p.suffix == ".so"]
    assert len(libs) == 1 and libs[0].name.startswith("cmm_loop-")
    assert [p.name for p in files] == [libs[0].name, libs[0].name + ".sha256"]
    cpu_kernel.forget()
    assert cpu_kernel.status() == {"available": True, "reason": "cached", "path": str(libs[0])}


def test_a_failing_compiler_leaves_nothing_and_the_trainer_falls_back(fresh_probes, tmp_path, monkeypatch):
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("CC", "false")  # exists everywhere, always fails
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: "/bin/false")
    st = cpu_kernel.status()
    assert not st["available"] and "failed" in st["reason"]
    leftovers = list((tmp_path / "c" / "kernels").glob("*")) if (tmp_path / "c" / "kernels").exists() else []
    assert leftovers == []
    x, y, T0 = _data()
    r = train_cmm(x, y, T0, TrainConfig(iterations=20))
    assert r.engine.startswith("torch")
    with pytest.raises(Exception, match="compiled CPU training loop cannot run here"):
        train_cmm(x, y, T0, TrainConfig(iterations=20), runtime=Runtime(engine="kernel"))


def test_a_compiler_that_refuses_a_flag_gets_the_next_flag_set(kernel, fresh_probes, tmp_path, monkeypatch):
    """gcc on aarch64 refuses -mprefer-vector-width; the build must then use the next flags, not give up."""
    cc = shutil.which(cpu_kernel._compiler() or "cc")
    picky = tmp_path / "picky-cc"
    picky.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -mprefer-vector-width=*)\n'
        '  echo "unrecognized option $a" >&2; exit 1;; esac; done\n'
        f'exec "{cc}" "$@"\n'
    )
    picky.chmod(0o755)
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: str(picky))
    st = cpu_kernel.status()
    assert st["available"] and st["reason"] == "built", st
    name = Path(st["path"]).name
    assert sorted(p.name for p in (tmp_path / "c" / "kernels").iterdir()) == [name, name + ".sha256"]  # no temp left
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=30)
    _close(
        train_cmm(x, y, T0, cfg, runtime=Runtime(engine="kernel")).W,
        train_cmm(x.double(), y, T0.double(), cfg, runtime=Runtime(engine="torch")).W,
    )


def test_no_compiler_falls_back_to_the_same_numbers(kernel, fresh_probes, monkeypatch):
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=40, warmup=5, lr=3e-3)
    with_kernel = train_cmm(x, y, T0, cfg)
    cpu_kernel.forget()
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    without = train_cmm(x, y, T0, cfg)
    assert with_kernel.engine == "compiled CPU loop" and without.engine.startswith("torch")
    assert "no C compiler" in cpu_kernel.status()["reason"]
    _close(with_kernel.W, without.W)
    _close(with_kernel.T, without.T)


def test_portable_switch_uses_public_torch_only_and_gets_the_same_weights(fresh_probes, monkeypatch):
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=40, warmup=5, lr=3e-3)
    fast = train_cmm(x, y, T0, cfg)
    monkeypatch.setenv("CMM_CACHE_PORTABLE", "1")
    fit_ops.forget()
    cpu_kernel.forget()
    portable = train_cmm(x, y, T0, cfg)
    assert portable.engine in ("torch (fused AdamW)", "torch (foreach AdamW)")
    assert fit_ops.describe(torch.device("cpu"))["onednn_linear"] is False
    assert cpu_kernel.status()["reason"] == "CMM_CACHE_PORTABLE is set"
    _close(fast.W, portable.W)
    _close(fast.T, portable.T)


def test_kernel_switch_off_keeps_the_guarded_torch_path(fresh_probes, monkeypatch):
    monkeypatch.setenv("CMM_CACHE_KERNEL", "0")
    x, y, T0 = _data()
    r = train_cmm(x, y, T0, TrainConfig(iterations=10))
    assert r.engine.startswith("torch") and cpu_kernel.status()["reason"] == "CMM_CACHE_KERNEL=0"


@pytest.mark.parametrize("kind", ["private", "fused", "foreach"])
def test_every_adamw_implementation_computes_adamw(kind):
    if kind == "private" and not fit_ops.fused_adamw_ok(torch.device("cpu"), torch.float32):
        pytest.skip("torch._fused_adamw_ is not usable in this torch")
    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(6, 10, generator=g)
    grads = [torch.randn(6, 10, generator=g) for _ in range(3)]
    p = p0.clone()
    opt = fit_ops.AdamW([p], weight_decay=1e-2, kind=kind)
    for i, gr in enumerate(grads):
        opt.step([gr], lr=1e-2 * (i + 1))
    want, m, v = (
        p0.double().clone(),
        torch.zeros_like(p0, dtype=torch.float64),
        torch.zeros_like(p0, dtype=torch.float64),
    )
    for s, gr in enumerate(grads, start=1):  # AdamW as written in the paper (decoupled weight decay)
        lr = 1e-2 * s
        want *= 1 - lr * 1e-2
        m = 0.9 * m + 0.1 * gr.double()
        v = 0.999 * v + 0.001 * gr.double() ** 2
        want -= lr / (1 - 0.9**s) * m / (v.sqrt() / (1 - 0.999**s) ** 0.5 + 1e-8)
    _close(p, want, rtol=1e-5, atol=1e-6)


def test_a_private_op_that_disagrees_or_fails_is_not_used(fresh_probes, monkeypatch):
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: None)  # runs, but does nothing: wrong
    assert not fit_ops.fused_adamw_ok(torch.device("cpu"), torch.float32)
    fit_ops.forget()

    def boom(*a, **k):
        raise RuntimeError("not in this build")

    monkeypatch.setattr(torch, "_fused_adamw_", boom)
    assert not fit_ops.fused_adamw_ok(torch.device("cpu"), torch.float32)
    assert fit_ops.AdamW([torch.zeros(3)], 0.0).kind in ("fused", "foreach")
    x, y, T0 = _data()
    r = train_cmm(x, y, T0, TrainConfig(iterations=10), runtime=Runtime(engine="torch"))
    assert "fused AdamW" in r.engine or "foreach AdamW" in r.engine


def test_importing_the_trainer_does_no_work_and_draws_no_random_numbers():
    code = (
        "import torch\n"
        "state = torch.get_rng_state()\n"
        "import cmm_cache.methods.trainers.cmm.trainer, cmm_cache.bench.fit, cmm_cache.methods.cmm\n"
        "from cmm_cache.methods.trainers import ops\n"
        "from cmm_cache.methods.trainers.cmm import kernel\n"
        "assert ops._probed == {} and kernel._state == {}, 'probed or built at import'\n"
        "assert torch.equal(state, torch.get_rng_state()), 'global RNG drawn at import'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_probing_draws_no_global_random_numbers(fresh_probes):
    state = torch.get_rng_state()
    fit_ops.onednn_ok(), fit_ops.fused_adamw_ok(torch.device("cpu"), torch.float32), fit_ops.describe("cpu")
    assert len(fit_ops._probed) >= 2
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_equals_the_cpu_fit():
    x, y, T0 = _data()
    cfg = TrainConfig(iterations=40, warmup=5, lr=3e-3)
    gpu = train_cmm(x.cuda(), y.cuda(), T0.cuda(), cfg)
    cpu = train_cmm(x.double(), y, T0.double(), cfg, runtime=Runtime(engine="torch"))
    assert gpu.W.device.type == "cuda" and gpu.engine.startswith("torch")
    _close(gpu.W.cpu(), cpu.W)
    _close(gpu.T.cpu(), cpu.T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_adamw_paths_agree():
    dev = torch.device("cuda")
    out = {}
    for kind in ("private", "fused", "foreach"):
        if kind == "private" and not fit_ops.fused_adamw_ok(dev, torch.float32):
            continue
        p = torch.ones(4, 4, device=dev)
        fit_ops.AdamW([p], 1e-2, kind=kind).step([torch.full((4, 4), 0.5, device=dev)], lr=1e-2)
        out[kind] = p.cpu()
    for v in out.values():
        _close(v, out["foreach"], rtol=1e-6, atol=1e-7)


def test_the_loop_flushes_denormals_only_while_it_runs():
    x, y, T0 = _data()
    assert not fit_ops.denormals_flushed()
    with fit_ops.flush_denormals():
        assert fit_ops.denormals_flushed()
    assert not fit_ops.denormals_flushed()
    for engine in ("auto", "torch"):
        train_cmm(x, y, T0, TrainConfig(iterations=20), runtime=Runtime(engine=engine))
        assert not fit_ops.denormals_flushed()  # the caller's floating-point mode is left as it was


def test_an_unwritable_cache_dir_builds_elsewhere(kernel, fresh_probes, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there
    st = cpu_kernel.status()
    assert st["available"] and "a-file" not in st["path"]
