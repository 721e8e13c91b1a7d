"""The compiled CPU training loop (``cmm_loop.c``): built on first use, cached on disk, loaded with ctypes.

Why a C kernel: on a CPU one CMM step at d = 1024 is bound by passes over the
d×d map W and by per-op overhead. The kernel runs whole segments of
iterations in one call and touches W, its AdamW moments m and v once per step
(see the comment at the top of ``cmm_loop.c``). It needs only a C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``): no torch headers, no build step
at install time, no new dependency. Where no compiler works, or
``CMM_CACHE_KERNEL=0`` / ``CMM_CACHE_PORTABLE=1`` is set, the trainer uses its
torch path instead (same equations; tests hold the two to float tolerance).

The shared library is cached under ``<cache-dir>/kernels/``, named by a hash
of the source, the compiler (path and version), the flags and the CPU's
feature flags, so a changed source, compiler or machine builds a new one. It
is compiled to a temporary name and renamed into place, so a concurrent or
killed build never leaves a half-written library at the final path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch

from cmm_cache.util.atomic import atomic_path
from cmm_cache.util.paths import cache_dir

SOURCE = Path(__file__).with_name("cmm_loop.c")
HEADERS = [Path(__file__).with_name(n) for n in ("cmm_ctx.h", "cmm_pool.h")]  # included by the source
ABI_VERSION = 1
MAX_BATCH = 64  # MAXB in cmm_loop.c
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math"]
# -march=native (AVX-512/AVX2/NEON as the machine has), first with 512-bit vectors preferred: the kernel's
# 64-byte vector type is split into two 256-bit halves otherwise (gcc's default on Intel Xeons with AVX-512),
# doubling its instructions and spilling its 16 live vectors (measured on a 2-vCPU Sapphire-Rapids-class
# Xeon: a DTD-sized step 1.48 -> 0.84 ms on one thread). Compilers or CPUs that refuse a flag get the next.
ARCH_FLAGS = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])

_lock = threading.Lock()
_state: dict = {}  # "lib": ctypes.CDLL | None, "reason": why not, "path": library file


def disabled_by_env() -> str | None:
    """Why the environment turns the kernel off (None: it does not)."""
    if os.environ.get("CMM_CACHE_PORTABLE", "") not in ("", "0"):
        return "CMM_CACHE_PORTABLE is set"
    if os.environ.get("CMM_CACHE_KERNEL", "") == "0":
        return "CMM_CACHE_KERNEL=0"
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_dir() -> Path:

    return cache_dir() / "kernels"


class _CompileFailed(Exception):
    """The compiler ran and refused (its last line of output in args[0])."""


def _build(cc: str, out_dir: Path) -> tuple[Path | None, str]:
    """Compile the source (cached by hash); returns (library path or None, reason)."""

    src = b"".join(p.read_bytes() for p in [SOURCE, *HEADERS])
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"compiler {cc} does not run ({e})"
    errors = []
    for arch in ARCH_FLAGS:
        flags = BASE_FLAGS + arch
        key = hashlib.sha256(
            b"\0".join([src, cc.encode(), version.encode(), " ".join(flags).encode(), _cpu_flags().encode()])
        )
        lib = out_dir / f"cmm_loop-{key.hexdigest()[:16]}.so"
        if lib.is_file():
            return lib, "cached"
        out_dir.mkdir(parents=True, exist_ok=True)  # an OSError here: the caller tries another folder
        try:
            # The compiler writes a temporary sibling; only a finished library takes the final name.
            with atomic_path(lib, ".so", fsync=False) as tmp:
                r = subprocess.run(
                    [cc, *flags, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True, timeout=120
                )
                if r.returncode != 0 or not tmp.is_file():
                    raise _CompileFailed((r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"])
            return lib, "built"
        except _CompileFailed as e:
            errors.append(e.args[0])
        except (OSError, subprocess.SubprocessError) as e:
            errors.append([str(e)])
    return None, f"compiling with {cc} failed: {errors[0][0] if errors and errors[0] else 'no output'}"


def _build_somewhere(cc: str) -> tuple[Path | None, str]:
    """Build into the cache dir, or (read-only or full) a per-user temporary folder."""
    import tempfile

    reasons = []
    for where in (_kernel_dir(), Path(tempfile.gettempdir()) / f"cmm-cache-kernels-{os.getuid()}"):
        try:
            return _build(cc, where)
        except OSError as e:
            reasons.append(f"cannot write {where} ({e.strerror or e})")
    return None, "; ".join(reasons)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.cmm_new.restype = p
    lib.cmm_new.argtypes = [i, i, i, i, p, p, p, p, p, p]
    lib.cmm_free.restype = None
    lib.cmm_free.argtypes = [p]
    lib.cmm_get.restype = None
    lib.cmm_get.argtypes = [p, p, p]
    lib.cmm_run.restype = i
    lib.cmm_run.argtypes = [p, p, p, i64, i64, i64, i, p]
    lib.cmm_abi_version.restype = i
    return lib


def load() -> ctypes.CDLL | None:
    """The loaded kernel library, building it if needed; None where it cannot be had (see :func:`status`)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, reason, path = None, disabled_by_env(), None
        if reason is None:
            cc = _compiler()
            if cc is None:
                reason = "no C compiler found (set CC)"
            else:
                path, reason = _build_somewhere(cc)
                if path is not None:
                    try:
                        lib = _bind(ctypes.CDLL(str(path)))
                        if lib.cmm_abi_version() != ABI_VERSION:
                            lib, reason = None, "library does not match this version"
                    except OSError as e:
                        lib, reason = None, f"cannot load {path} ({e})"
        _state.update(lib=lib, reason=reason, path=str(path) if path else None)
        return lib


def status() -> dict:
    """Whether the kernel is in use and why (for benchmarks and bug reports)."""
    env = disabled_by_env()
    if env:
        return {"available": False, "reason": env, "path": None}
    load()
    return {"available": _state["lib"] is not None, "reason": _state["reason"], "path": _state["path"]}


def forget() -> None:
    """Drop the in-process memo (tests: load again under another environment)."""
    with _lock:
        _state.clear()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class KernelLoop:
    """One run's state inside the C kernel (the same interface as fit_torch.TorchLoop).

    The tensors passed in are copied to contiguous CPU float32/int64 once and
    kept alive here for as long as the C side points at them.
    """

    name = "compiled CPU loop"

    def __init__(self, lib, x, y, p0y, T0, cfg):
        self.lib = lib
        self.x = x.detach().to("cpu", torch.float32).contiguous()
        self.y = y.detach().to("cpu", torch.int64).contiguous()
        self.p0y = p0y.detach().to("cpu", torch.float32).contiguous()
        T0 = T0.detach().to("cpu", torch.float32).contiguous()
        self.C, self.d = T0.shape
        flags = (ctypes.c_int * 5)(
            cfg.use_map, cfg.triplet, cfg.normalize_T_in_s, cfg.cmm_only, cfg.fusion == "logit" and not cfg.cmm_only
        )
        params = (ctypes.c_float * 6)(cfg.train_alpha, cfg.margin, cfg.weight_decay, 0.9, 0.999, 1e-8)
        self.use_map = cfg.use_map
        self.h = lib.cmm_new(
            cfg.batch_size,
            self.C,
            self.d,
            len(self.x),
            ctypes.addressof(flags),
            ctypes.addressof(params),
            _ptr(self.x),
            _ptr(self.y),
            _ptr(self.p0y),
            T0.data_ptr(),
        )
        if not self.h:
            raise MemoryError("the CPU kernel could not allocate its state")
        self.batches = None
        self.lrs = None

    def set_schedule(self, batches: torch.Tensor, lrs) -> None:
        self.batches = batches.detach().to("cpu", torch.int64).contiguous()
        self.lrs = np.ascontiguousarray(lrs, dtype=np.float64)

    def run(self, t0: int, t1: int, threads: int | None, want=()) -> dict:
        """Iterations t0..t1-1 with `threads` threads; returns {iteration + 1: loss} for those in `want`."""
        threads = threads or 1
        losses = np.empty(t1 - t0, dtype=np.float32)
        rc = self.lib.cmm_run(
            self.h,
            self.batches.data_ptr(),
            self.lrs.ctypes.data,
            len(self.lrs),
            t0,
            t1,
            int(threads),
            losses.ctypes.data,
        )
        if rc != 0:  # threads could not start: one thread still works
            rc = self.lib.cmm_run(
                self.h, self.batches.data_ptr(), self.lrs.ctypes.data, len(self.lrs), t0, t1, 1, losses.ctypes.data
            )
        return {i: float(losses[i - 1 - t0]) for i in want if t0 < i <= t1}

    def weights(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        W = torch.empty(self.d, self.d) if self.use_map else None
        T = torch.empty(self.C, self.d)
        self.lib.cmm_get(self.h, _ptr(W), T.data_ptr())
        return W, T

    def close(self) -> None:
        if self.h:
            self.lib.cmm_free(self.h)
            self.h = None

    def __del__(self):
        self.close()
