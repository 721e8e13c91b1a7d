"""The compiled CPU training loop (``cmm_loop.c``): built on first use, cached in a private folder, loaded with ctypes.

Why a C kernel: on a CPU one CMM step at d = 1024 is bound by passes over the
d×d map W and by per-op overhead. The kernel runs whole segments of
iterations in one call and touches W, its AdamW moments m and v once per step
(see the comment at the top of ``cmm_loop.c``). It needs only a C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``): no torch headers, no build step
at install time, no new dependency. Where no compiler works, or
``CMM_CACHE_KERNEL=0`` / ``CMM_CACHE_PORTABLE=1`` is set, the trainer uses its
torch path instead (same equations; tests hold the two to float tolerance).
A kernel that cannot be built or loaded is said once per process (a warning
on the ``cmm_cache`` logger, which the CLI prints) with the reason and the cost,
and a run's result records the engine that trained it.

Trust: a shared library runs code the moment it is loaded, so it is loaded
only from a folder that is the user's own (``<cache-dir>/kernels``: owned by
the user, mode 0700, no symbolic link; :mod:`cmm_cache.util.private`), checked
before every load, and only when its content matches the sha256 recorded in
that folder when it was built. The library is opened once without following
links, hashed from that open descriptor and loaded from the same descriptor
(``/proc/self/fd``), so a file swapped after the check is never the one
loaded. Where the folder fails a check (another owner, open to others, a link)
or cannot be written, the loop is built in a fresh ``tempfile.mkdtemp`` folder
for this process and removed after loading: never a predictable shared path.
The library is named by a hash of the source, the compiler (path and version),
the flags and the CPU's feature flags, so a changed source, compiler or
machine builds a new one; it is compiled to a temporary name and renamed into
place, so a concurrent or killed build never leaves a half-written library at
the final path. Arguments are checked before every call into C (shapes,
dtypes, label and batch indices in range): a wrong call is a Python error,
never a crash.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from cmm_cache.errors import CmmError
from cmm_cache.util.atomic import atomic_path, write_error_reason
from cmm_cache.util.private import NotPrivate, open_private_file, private_dir, read_private_file

SOURCE = Path(__file__).with_name("cmm_loop.c")
HEADERS = [Path(__file__).with_name(n) for n in ("cmm_ctx.h", "cmm_pool.h")]  # included by the source
ABI_VERSION = 1
MAX_BATCH = 64  # MAXB in cmm_loop.c
MAX_THREADS = 8  # MAXT in cmm_pool.h (the C side caps it too)
KERNEL_DIR = "kernels"  # under the cache dir
HASH_SUFFIX = ".sha256"
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math"]
# -march=native (AVX-512/AVX2/NEON as the machine has), first with 512-bit vectors preferred: the kernel's
# 64-byte vector type is split into two 256-bit halves otherwise (gcc's default on Intel Xeons with AVX-512),
# doubling its instructions and spilling its 16 live vectors (measured on a 2-vCPU Sapphire-Rapids-class
# Xeon: a DTD-sized step 1.48 -> 0.84 ms on one thread). Compilers or CPUs that refuse a flag get the next.
ARCH_FLAGS = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])
# What running without the kernel costs (said with the reason, once).
COST = (
    "CMM trains on the torch path instead: the same numbers, but several times slower on a CPU "
    "(`cmm-cache bench fit` times both)"
)

log = logging.getLogger("cmm_cache.kernel")
_lock = threading.Lock()
_state: dict = {}  # "lib": ctypes.CDLL | None, "reason": why (not), "path": library file, "said": warned


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


class _CompileFailed(Exception):
    """The compiler ran and refused (its last line of output in args[0])."""


class _Unusable(Exception):
    """No kernel from this folder (args[0]: why)."""


def _keys(cc: str) -> list[tuple[list[str], str]]:
    """(flags, library file name) for each flag set to try, in order."""
    src = b"".join(p.read_bytes() for p in [SOURCE, *HEADERS])
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unusable(f"compiler {cc} does not run ({e})") from None
    out = []
    for arch in ARCH_FLAGS:
        flags = BASE_FLAGS + arch
        key = hashlib.sha256(
            b"\0".join([src, cc.encode(), version.encode(), " ".join(flags).encode(), _cpu_flags().encode()])
        )
        out.append((flags, f"cmm_loop-{key.hexdigest()[:16]}.so"))
    return out


def _compile(cc: str, flags: list[str], out_dir: Path, name: str) -> None:
    """Compile into `out_dir/name` and record its sha256 beside it (both written atomically)."""
    lib = out_dir / name
    # The compiler writes a temporary sibling; only a finished library takes the final name, after its hash.
    with atomic_path(lib, ".so", fsync=False) as tmp:
        r = subprocess.run(
            [cc, *flags, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True, timeout=120
        )
        if r.returncode != 0 or not tmp.is_file():
            raise _CompileFailed((r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"])
        os.chmod(tmp, 0o700)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        with atomic_path(out_dir / (name + HASH_SUFFIX), fsync=False) as htmp:
            htmp.write_text(digest + "\n")
            os.chmod(htmp, 0o600)


_pinned: list[int] = []  # folder descriptors of loaded libraries, kept open (see _open_verified)


def _open_verified(out_dir: Path, name: str) -> ctypes.CDLL:
    """Load `out_dir/name` after checking the folder and the file (private, no links) and its recorded sha256.
    :class:`_Unusable` when any check fails.

    The library is loaded through the checked folder's descriptor (``/proc/self/fd/<folder>/<name>``), so a
    folder swapped at its path after the check is never the one loaded from. That descriptor stays open for
    the life of the process: the dynamic loader remembers libraries by the path string, and a number in use
    is never handed to another folder, so a later load never gets an earlier library by its name."""
    try:
        recorded = read_private_file(out_dir, name + HASH_SUFFIX).decode("ascii", "replace").strip()
        dfd, ffd = open_private_file(out_dir, name)
    except (NotPrivate, OSError) as e:
        raise _Unusable(str(e)) from None
    keep = False
    try:
        h = hashlib.sha256()
        while True:
            b = os.read(ffd, 1 << 20)
            if not b:
                break
            h.update(b)
        if h.hexdigest() != recorded:
            raise _Unusable(f"{out_dir / name} does not match the sha256 recorded when it was built")
        via_fd = f"/proc/self/fd/{dfd}"
        target = f"{via_fd}/{name}" if os.path.isdir(via_fd) else str(out_dir / name)
        try:
            loaded = ctypes.CDLL(target)
            keep = target.startswith(via_fd)  # loaded (even if unusable): its path string stays taken
            lib = _bind(loaded)
            if lib.cmm_abi_version() != ABI_VERSION:
                raise _Unusable(f"{out_dir / name} does not match this version (ABI)")
        except (OSError, AttributeError) as e:  # not a library, or not ours: missing symbols
            raise _Unusable(f"cannot load {out_dir / name} ({e})") from None
        return lib
    finally:
        os.close(ffd)
        if keep:
            _pinned.append(dfd)
        else:
            os.close(dfd)


def _build_and_load(cc: str, out_dir: Path) -> tuple[ctypes.CDLL | None, str, str | None]:
    """(library or None, reason, path): the cached library of the first flag set that builds, else a new build.

    A cached library that fails its checks is removed and built again (once)."""
    errors = []
    for flags, name in _keys(cc):
        lib_path = out_dir / name
        if lib_path.is_file() or (out_dir / (name + HASH_SUFFIX)).is_file():
            try:
                return _open_verified(out_dir, name), "cached", str(lib_path)
            except _Unusable as e:
                why = e.args[0]
                for p in (lib_path, out_dir / (name + HASH_SUFFIX)):
                    try:
                        p.unlink()
                    except OSError:
                        pass
                errors.append([f"{why}: built again"])
        try:
            _compile(cc, flags, out_dir, name)
        except _CompileFailed as e:
            errors.append(e.args[0])
            continue
        except (OSError, subprocess.SubprocessError, CmmError) as e:
            reason = write_error_reason(e)
            raise _Unusable(f"cannot write {out_dir} ({reason or e})") from None
        return _open_verified(out_dir, name), "built", str(lib_path)
    first = next((e[0] for e in errors if e), "no output")
    return None, f"compiling with {cc} failed: {first}", None


def _in_temporary_folder(cc: str, why: str) -> tuple[ctypes.CDLL | None, str, str | None]:
    """Build and load in a fresh private temporary folder (removed at once: the loaded library stays mapped)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="cmm-cache-kernel-"))  # 0700, unpredictable name
    except OSError as e:
        return None, f"{why}; no temporary folder either ({e.strerror or e})", None
    try:
        lib, how, path = _build_and_load(cc, tmp)
    except _Unusable as e:
        return None, f"{why}; {e.args[0]}", None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if lib is None:
        return None, how, None
    return lib, f"built in a temporary folder for this process ({why})", path


def _say_once(lib, reason: str, private_refused: str | None) -> None:
    """The one warning of a process about the kernel: why it is not used and what that costs, or why it was
    built in a temporary folder (its private folder was refused)."""
    if _state.get("said"):
        return
    if lib is None:
        log.warning("The compiled CPU training loop is not used: %s. %s.", reason, COST)
    elif private_refused:
        log.warning(
            "The compiled CPU training loop was not loaded from its folder: %s. It was built in a temporary "
            "folder for this process instead (a few seconds per process); make the folder yours with mode 0700 "
            "(or remove it) to keep one build.",
            private_refused,
        )
    else:
        return
    _state["said"] = True


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
        lib, reason, path, refused = None, disabled_by_env(), None, None
        if reason is None:
            cc = _compiler()
            if cc is None:
                reason = "no C compiler found (set CC)"
            else:
                try:
                    lib, reason, path = _build_and_load(cc, private_dir(KERNEL_DIR, clear_if_open=True))
                except (NotPrivate, _Unusable) as e:
                    refused = e.args[0]
                    lib, reason, path = _in_temporary_folder(cc, refused)
            _say_once(lib, reason, refused)
        _state.update(lib=lib, reason=reason, path=path)
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


def _check_inputs(x: torch.Tensor, y: torch.Tensor, p0y: torch.Tensor, T0: torch.Tensor, B: int) -> None:
    """Everything the C side indexes with, checked once before any call into it (ValueError otherwise)."""
    if T0.ndim != 2 or T0.shape[0] < 2 or T0.shape[1] < 1:
        raise ValueError(f"T0 must be [C >= 2, d >= 1], got {list(T0.shape)}")
    C, d = T0.shape
    N = len(x)
    if x.ndim != 2 or x.shape[1] != d or N < 1 or N >= 2**31:
        raise ValueError(f"x must be [N, {d}] with 1 <= N < 2^31, got {list(x.shape)}")
    if y.shape != (N,) or p0y.shape != (N,):
        raise ValueError(f"y and p0y must be [{N}], got {list(y.shape)} and {list(p0y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(f"labels outside 0..{C - 1}")
    if not 1 <= B <= MAX_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_BATCH}, got {B}")


class KernelLoop:
    """One run's state inside the C kernel (the same interface as fit_torch.TorchLoop).

    The tensors passed in are copied to contiguous CPU float32/int64 once and
    kept alive here for as long as the C side points at them.
    """

    name = "compiled CPU loop"

    def __init__(self, lib, x, y, p0y, T0, cfg):
        self.lib = lib
        self.h = None
        self.x = x.detach().to("cpu", torch.float32).contiguous()
        self.y = y.detach().to("cpu", torch.int64).contiguous()
        self.p0y = p0y.detach().to("cpu", torch.float32).contiguous()
        T0 = T0.detach().to("cpu", torch.float32).contiguous()
        _check_inputs(self.x, self.y, self.p0y, T0, int(cfg.batch_size))
        self.C, self.d = T0.shape
        self.B = int(cfg.batch_size)
        flags = (ctypes.c_int * 5)(
            cfg.use_map, cfg.triplet, cfg.normalize_T_in_s, cfg.cmm_only, cfg.fusion == "logit" and not cfg.cmm_only
        )
        params = (ctypes.c_float * 6)(cfg.train_alpha, cfg.margin, cfg.weight_decay, 0.9, 0.999, 1e-8)
        self.use_map = cfg.use_map
        self.h = lib.cmm_new(
            self.B,
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
        batches = batches.detach().to("cpu", torch.int64).contiguous()
        lrs = np.ascontiguousarray(lrs, dtype=np.float64)
        if batches.ndim != 2 or batches.shape[1] != self.B:
            raise ValueError(f"batches must be [iterations, {self.B}], got {list(batches.shape)}")
        if len(lrs) != len(batches) or lrs.ndim != 1:
            raise ValueError(f"{len(lrs)} learning rates for {len(batches)} iterations")
        if batches.numel() and (int(batches.min()) < 0 or int(batches.max()) >= len(self.x)):
            raise ValueError(f"batch indices outside 0..{len(self.x) - 1}")
        if not np.all(np.isfinite(lrs)):
            raise ValueError("learning rates must be finite")
        self.batches, self.lrs = batches, lrs

    def run(self, t0: int, t1: int, threads: int | None, want=()) -> dict:
        """Iterations t0..t1-1 with `threads` threads; returns {iteration + 1: loss} for those in `want`."""
        t0, t1 = int(t0), int(t1)
        if self.h is None or self.batches is None:
            raise ValueError("the kernel loop is closed or has no schedule (set_schedule first)")
        if not 0 <= t0 <= t1 <= len(self.lrs):
            raise ValueError(f"iterations {t0}..{t1} outside the schedule's 0..{len(self.lrs)}")
        threads = min(max(int(threads or 1), 1), MAX_THREADS)
        losses = np.empty(t1 - t0, dtype=np.float32)
        rc = self.lib.cmm_run(
            self.h,
            self.batches.data_ptr(),
            self.lrs.ctypes.data,
            len(self.lrs),
            t0,
            t1,
            threads,
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
        if getattr(self, "h", None):
            self.lib.cmm_free(self.h)
            self.h = None

    def __del__(self):
        self.close()
