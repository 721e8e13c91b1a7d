"""Benchmarks: datasets × backbones × methods × shots × seeds as one flat job list, checked, sharded and run.

    from cmm_cache.runs.benchmark import benchmark
    out = benchmark(["dtd", "eurosat"], ["rn50"], ["zero-shot", "cmm"], shots=[1, 16], seeds=[1, 2, 3])

* **Jobs** (:func:`job_list`): one per (dataset, backbone, method, shots, seed), in that nesting order. Each job is
  an ordinary run of :func:`cmm_cache.runs.compare.fit_one` (same few-shot subsets, val-only selection, options
  and run folders as ``fit`` and ``compare``): a job whose run folder already holds the same run (same identity)
  is skipped, so a killed benchmark resumes where it stopped; ``force`` refits.
* **Checks first** (:func:`check_requirements`): every job's requirements — its cache, what its method needs
  from that cache (:func:`~cmm_cache.methods.base.method_needs`: per-template text, block inputs), the few-shot
  subsets and their data, its run folder — are checked before anything trains, for the whole job list (every
  shard checks every job, so a sharded benchmark fails in every shard alike); one error lists all that is missing
  and the commands that add it. With methods 'all', as in ``compare``, a method whose inputs a cache lacks (block
  inputs for ``cross-modal-partial-ft``) is left out on that cache and listed in ``not_run``
  (:func:`leave_out_unservable`); named explicitly, it is one of the problems.
* **Units** (:func:`units`): jobs that must run in one process — a job alone, or the jobs of one subset whose
  methods share a result (:attr:`~cmm_cache.methods.base.Method.shares`; the store is
  :class:`~cmm_cache.methods.base.SharedFits`), so the cross-modal grid is trained once per subset.
* **Shards** (:func:`shard_units`): a pure function of (job list, shard index, shard count). Units are placed
  by expected cost, largest first, each on the least loaded shard (ties: the lower index). A unit's cost is
  the largest :meth:`~cmm_cache.methods.base.Method.expected_cost` among its jobs (shared work is paid
  once): rough seconds of one run on a DTD-sized cache, scaled by the fraction of its step budget a
  ``max_iterations`` cap leaves. Datasets are not weighted (the job list does not know their sizes), so
  an ImageNet job counts as much as a DTD one.
* **Where the shard comes from** (:func:`resolve_shard`): ``shard="I/N"`` (0-based I), else torchrun's
  ``RANK``/``WORLD_SIZE`` (each rank on ``cuda:LOCAL_RANK``), else a SLURM job array's
  ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``; torchrun inside an array composes (shard = task ·
  WORLD_SIZE + RANK of TASK_COUNT · WORLD_SIZE). An explicit shard that disagrees with the environment is an
  error, so two processes never run the same shard by mistake.
* **Processes** (``jobs=N``): N worker processes (:func:`cmm_cache.util.parallel.parallel_map`), each saving
  its runs as they finish: a killed benchmark loses only the runs in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cmm_cache.cache.locate import cache_path, dataset_caches, find_cache
from cmm_cache.cache.reader import open_cache
from cmm_cache.datasets.registry import PAPER_DATASETS
from cmm_cache.errors import CmmError
from cmm_cache.methods.base import SharedFits, Unmet, block_inputs_lacking, unmet_needs
from cmm_cache.methods.registry import get_method
from cmm_cache.runs.compare import fit_one, means_all, resolve_methods
from cmm_cache.runs.protocol import (
    ReadOnceCache,
    check_data,
    plan,
    planned_identity,
    precheck_errors,
    read_once,
    resolve_method,
)
from cmm_cache.runs.store import check_target, target_dir
from cmm_cache.util import paths
from cmm_cache.util.paths import safe_name

PROTOCOL_SHOTS = (1, 2, 4, 8, 16)
PROTOCOL_SEEDS = (1, 2, 3)


# ----------------------------------------------------------------------------
# The job list


@dataclass(frozen=True)
class Job:
    """One run of the benchmark."""

    dataset: str  # as given: a registered name, your data's short name, or a path
    backbone: str
    method: str
    shots: int
    seed: int
    options: tuple = ()  # the method's options as given (sorted (key, value) pairs; the resolved set is in the run)
    cost: float = 1.0  # expected cost (Method.expected_cost)

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.dataset, self.backbone)

    @property
    def subset(self) -> tuple[str, str, int, int]:
        return (self.dataset, self.backbone, self.shots, self.seed)

    @property
    def opts(self) -> dict:
        return {k: _thawed(v) for k, v in self.options}

    def label(self) -> str:
        return f"{self.dataset} × {self.backbone} {self.method} {self.shots}-shot seed {self.seed}"


def resolve_datasets(spec) -> list[str]:
    """'paper' (the 11 datasets of the paper's Table 1), a comma list or a list; duplicates dropped."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[str] = []
    for s in spec or []:
        out += list(PAPER_DATASETS) if s == "paper" else [str(s)]
    if not out:
        raise CmmError("No dataset to benchmark.", "Pass --datasets paper or a comma list of datasets.")
    return list(dict.fromkeys(out))


def _as_list(spec) -> list[str]:
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    return list(dict.fromkeys(str(s) for s in spec or []))


def _frozen(options: dict | None) -> tuple:
    return tuple(sorted((str(k), _hashable(v)) for k, v in (options or {}).items()))


def _hashable(v):
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _thawed(v):
    return [_thawed(x) for x in v] if isinstance(v, tuple) else v


def job_list(
    datasets, backbones, methods, shots=PROTOCOL_SHOTS, seeds=PROTOCOL_SEEDS, options=None, max_iterations=None
) -> list[Job]:
    """Every (dataset, backbone, method, shots, seed), in that nesting order (each list in the order given).

    `options` maps a method to its options; `max_iterations` caps every trained method's steps
    (:meth:`~cmm_cache.methods.base.Method.capped`). Unknown methods or options raise here, before anything.
    """
    ds, bbs, names = resolve_datasets(datasets), _as_list(backbones), resolve_methods(methods)
    shots, seeds = (
        [int(k) for k in dict.fromkeys(shots or PROTOCOL_SHOTS)],
        [int(s) for s in dict.fromkeys(seeds or PROTOCOL_SEEDS)],
    )
    if not bbs:
        raise CmmError("No backbone to benchmark.", "Pass --backbone NAME (or a comma list).")
    for name in options or {}:
        resolve_methods([name])  # an option for an unknown method is an error, not ignored
    per_method = {}
    for name in names:
        m = get_method(name)
        opts = m.capped((options or {}).get(name), max_iterations)
        resolve_method(name, opts)  # unknown options raise now
        per_method[name] = (_frozen(opts), m.expected_cost(opts))
    return [
        Job(d, b, name, k, s, per_method[name][0], per_method[name][1])
        for d in ds
        for b in bbs
        for name in names
        for k in shots
        for s in seeds
    ]


# ----------------------------------------------------------------------------
# Units and shards


def units(jobs: list[Job]) -> list[list[int]]:
    """Indices of jobs that run together in one process, in job-list order of their first job: jobs of one
    subset (dataset, backbone, shots, seed) whose methods share a result name are one unit; others alone."""
    parent = list(range(len(jobs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple, int] = {}
    for i, j in enumerate(jobs):
        for name in get_method(j.method).shares:
            key = (j.subset, name)
            if key in owner:
                a, b = root(owner[key]), root(i)
                parent[max(a, b)] = min(a, b)
            else:
                owner[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(jobs)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def unit_cost(jobs: list[Job], unit: list[int]) -> float:
    """The largest expected cost among a unit's jobs: what they share is paid once, by the first."""
    return max(jobs[i].cost for i in unit)


def shard_units(costs: list[float], index: int, count: int) -> list[int]:
    """Which units (by position) shard `index` of `count` runs: largest cost first, each to the least loaded
    shard (ties: the lower shard index, then the earlier unit). A pure function of its arguments."""
    if not 0 <= index < count:
        raise CmmError(f"Shard {index}/{count} does not exist.", f"Shards are numbered 0 to {count - 1}.")
    loads = [0.0] * count
    mine = []
    for u in sorted(range(len(costs)), key=lambda u: (-costs[u], u)):
        s = min(range(count), key=lambda s: (loads[s], s))
        loads[s] += costs[u]
        if s == index:
            mine.append(u)
    return sorted(mine)


def shard_jobs(jobs: list[Job], index: int, count: int) -> list[list[int]]:
    """The units (lists of job indices) of shard `index` of `count`, in job-list order."""
    us = units(jobs)
    return [us[u] for u in shard_units([unit_cost(jobs, u) for u in us], index, count)]


@dataclass(frozen=True)
class Shard:
    """Which part of the job list this process runs, and who said so."""

    index: int = 0
    count: int = 1
    source: str = "none"  # "--shard", "torchrun", "slurm array", "torchrun in a slurm array", "none"
    local_rank: int | None = None  # torchrun's LOCAL_RANK: the GPU of this process

    def __str__(self) -> str:
        return f"{self.index}/{self.count}" + ("" if self.source == "none" else f" ({self.source})")


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N)."""
    i, sep, n = str(spec).partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise CmmError(
            f"--shard '{spec}' is not I/N with 0 <= I < N.", "Example: --shard 0/4 ... --shard 3/4 (four shards)."
        )
    return index, count


def _env_int(env, name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise CmmError(f"The environment variable {name}={raw!r} is not an integer.", f"Unset {name}.") from None


def resolve_shard(spec: str | None = None, env=None) -> Shard:
    """This process's shard: `spec` ('I/N'), torchrun's RANK/WORLD_SIZE, a SLURM array, both composed, or 0/1.

    Precedence: the environment (torchrun, a SLURM array, or torchrun inside an array, composed) decides where
    it sets a shard; an explicit `spec` must then name the same shard (else an error: it would run another
    process's jobs). Without either, `spec` or the whole job list (0/1).
    """
    env = os.environ if env is None else env
    torch_shard = None
    world, rank = _env_int(env, "WORLD_SIZE"), _env_int(env, "RANK")
    local = _env_int(env, "LOCAL_RANK")
    if world is not None and world > 1:
        if rank is None or not 0 <= rank < world:
            raise CmmError(f"WORLD_SIZE={world} but RANK={env.get('RANK')!r}.", "Start the processes with torchrun.")
        torch_shard = (rank, world)
    slurm = None
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        low = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        if count is None:
            raise CmmError(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: the shard count is unknown.",
                "Pass --shard I/N explicitly (I = this task's 0-based index, N = the number of tasks).",
            )
        index, rem = divmod(task - low, step)
        if rem or not 0 <= index < count:
            raise CmmError(
                f"SLURM array task {task} (min {low}, step {step}, {count} tasks) is not one of {count} "
                "evenly spaced tasks.",
                "Use a contiguous array (--array=0-N), or pass --shard I/N explicitly.",
            )
        slurm = (index, count)
    if torch_shard and slurm:
        (t, n), (r, w) = slurm, torch_shard
        env_shard = Shard(t * w + r, n * w, "torchrun in a slurm array", local)
    elif torch_shard:
        env_shard = Shard(*torch_shard, "torchrun", local)
    elif slurm:
        env_shard = Shard(*slurm, "slurm array")
    else:
        env_shard = None
    if spec is None:
        return env_shard or Shard()
    index, count = parse_shard(spec)
    if env_shard is not None and (index, count) != (env_shard.index, env_shard.count):
        raise CmmError(
            f"--shard {index}/{count} disagrees with the {env_shard.source} environment, which makes this process "
            f"shard {env_shard.index}/{env_shard.count}.",
            "Drop --shard (the environment decides), or unset its variables (RANK/WORLD_SIZE, SLURM_ARRAY_TASK_*).",
        )
    return env_shard or Shard(index, count, "--shard")


def shard_device(device: str, shard: Shard) -> str:
    """Under torchrun each rank takes its own GPU: ``cuda:LOCAL_RANK`` when the device is auto or cuda."""
    from cmm_cache.util.device import resolve_device

    dev = resolve_device(device)
    if shard.local_rank is not None and dev == "cuda":
        return f"cuda:{shard.local_rank}"
    return dev


# ----------------------------------------------------------------------------
# Checks before anything trains


@dataclass
class Problem:
    """A requirement not met: what is missing (with the jobs it stops) and the command that adds it."""

    message: str
    command: str = ""
    kind: str = "other"  # "cache" | "need" | "input" | "subset" | "data" | "folder" | "other"
    dataset: str = ""
    backbone: str = ""


@dataclass
class Checked:
    """What the checks found: the open caches and, per job, its run folder and whether it is finished."""

    caches: dict = field(default_factory=dict)  # (dataset, backbone) -> ReadOnceCache
    where: dict = field(default_factory=dict)  # job index -> run folder
    finished: dict = field(default_factory=dict)  # job index -> True when the folder holds this very run
    problems: list = field(default_factory=list)


def extract_plan(shots, seeds) -> tuple[list[int] | None, list[int] | None]:
    """The --shots/--seeds a cache for these benchmark shots/seeds is extracted with: None where extract's default
    (the protocol's, capped to what the data holds) covers them, else the protocol's plus the extra ones."""
    k = None if set(shots) <= set(PROTOCOL_SHOTS) else sorted(set(shots) | set(PROTOCOL_SHOTS))
    s = None if set(seeds) <= set(PROTOCOL_SEEDS) else sorted(set(seeds) | set(PROTOCOL_SEEDS))
    return k, s


def extract_command(dataset: str, backbone: str, shots, seeds, cache_dir=None) -> str:
    """The `extract` command that writes the cache a benchmark needs."""
    cmd = f"cmm-cache extract --dataset {dataset} --backbone {backbone}"
    k, s = extract_plan(shots, seeds)
    if k:
        cmd += " --shots " + ",".join(map(str, k))
    if s:
        cmd += " --seeds " + ",".join(map(str, s))
    if cache_dir is not None:
        cmd += f" --cache-dir {cache_dir}"
    return cmd


def cache_missing(dataset: str, backbone: str, cache_dir=None) -> bool:
    """No cache of (dataset, backbone) exists at all (an ambiguous short name is not 'missing')."""
    if cache_path(dataset, backbone, cache_dir).is_file():
        return False
    return not any(f.name == safe_name(backbone) + ".h5" for f in dataset_caches(dataset, cache_dir))


def _by_cache(jobs: list[Job]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for i, j in enumerate(jobs):
        out.setdefault(j.cache_key, []).append(i)
    return out


def check_requirements(
    jobs: list[Job], *, cache_dir=None, runs_root=None, templates=None, force=False, caches=None
) -> Checked:
    """Check every job before anything trains (see the module docstring); problems are collected, not raised."""
    out = Checked()
    root = Path(runs_root) if runs_root is not None else paths.runs_dir(cache_dir)
    for (dataset, backbone), idx in _by_cache(jobs).items():
        shots = list(dict.fromkeys(jobs[i].shots for i in idx))
        seeds = list(dict.fromkeys(jobs[i].seed for i in idx))
        where = dict(dataset=dataset, backbone=backbone)
        if caches and (dataset, backbone) in caches:
            cache = caches[(dataset, backbone)]
        else:
            if cache_missing(dataset, backbone, cache_dir):
                out.problems.append(
                    Problem(
                        f"no cache of {dataset} with backbone {backbone} in {paths.cache_dir(cache_dir)}",
                        extract_command(dataset, backbone, shots, seeds, cache_dir),
                        "cache",
                        **where,
                    )
                )
                continue
            try:
                cache = read_once(open_cache(find_cache(dataset, backbone, cache_dir)))
            except CmmError as e:
                out.problems.append(Problem(e.message + (f" ({e.hint})" if e.hint else ""), "", "cache", **where))
                continue
        out.caches[(dataset, backbone)] = cache
        try:
            if templates is not None:
                cache.text(templates)
        except CmmError as e:
            out.problems.append(Problem(e.message, e.hint or "", "other", **where))
            continue
        try:
            groups = plan(cache, shots, seeds)
        except CmmError as e:  # the subsets the cache has are still checked
            out.problems.append(Problem(e.message, e.hint or "", "subset", **where))
            groups = [(k, s) for k in shots for s in seeds if (k, s) in cache.fewshot_groups]
        fine = []
        for k, s in groups:
            try:
                check_data(cache, k, s)
                fine.append((k, s))
            except CmmError as e:
                out.problems.append(Problem(e.message, e.hint or "", "data", **where))
        runs = [(*resolve_method(jobs[i].method, jobs[i].opts), jobs[i].shots, jobs[i].seed) for i in idx]
        for e in precheck_errors(cache, [r for r in runs if (r[2], r[3]) in fine], templates):
            out.problems.append(Problem(e.message + (f" ({e.hint})" if e.hint else ""), "", "method", **where))
        seen: set[str] = set()
        for i in idx:
            m, opts = resolve_method(jobs[i].method, jobs[i].opts)
            if m.name not in seen:
                seen.add(m.name)
                for u in unmet_needs(m, cache, templates):  # --extract adds per-template text, nothing else
                    kind = "need" if u.need == "per_template_text" else "input"
                    out.problems.append(Problem(u.message, u.command, kind, **where))
            if (jobs[i].shots, jobs[i].seed) not in groups:
                continue
            ident = planned_identity(cache, m, opts, templates, jobs[i].shots, jobs[i].seed)
            path = target_dir(cache, ident, root)
            out.where[i] = path
            try:
                out.finished[i] = check_target(path, ident, force) == "same"
            except CmmError as e:
                out.problems.append(Problem(e.message, e.hint or "", "folder", **where))
    return out


def refuse(problems: list[Problem], jobs: list[Job], extract_hint: bool = True) -> None:
    """One error listing every problem and the commands that fix them (nothing when there is none)."""
    if not problems:
        return
    lines = "\n".join(f"  - {p.message}" for p in problems)
    commands = list(dict.fromkeys(p.command for p in problems if p.command))
    hint = ("Add what is missing with:\n" + "\n".join(f"  {c}" for c in commands)) if commands else ""
    if extract_hint and any(p.kind in ("cache", "need") for p in problems):
        hint += "\n(or pass --extract: missing caches and per-template text are added before any training)"
    raise CmmError(
        f"Nothing was trained: {len(problems)} requirement(s) of the {len(jobs)} benchmark jobs are not met:\n{lines}",
        hint.strip() or None,
    )


# ----------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class UnitSpec:
    """What a worker process needs to run one unit (plain data: it travels through a pipe)."""

    cache: str  # the cache file
    jobs: tuple  # ((method, options as given, shots, seed), ...)
    runs_root: str
    templates: str | None
    device: str
    force: bool


_WORKER_CACHE: dict = {}  # a worker keeps the cache it read last (units of one cache come one after another)


def _worker_cache(path: str) -> ReadOnceCache:
    if path not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[path] = read_once(open_cache(path))
    return _WORKER_CACHE[path]


def run_unit(spec: UnitSpec, cache: ReadOnceCache | None = None, on_run: Callable | None = None) -> list[dict]:
    """Fit (or skip) the jobs of one unit on one cache, saving each run as it finishes; their summary rows."""
    cache = cache if cache is not None else _worker_cache(spec.cache)
    shared = SharedFits()  # one unit = jobs of one subset: what they share is computed once
    rows = []
    for method, options, shots, seed in spec.jobs:
        row = fit_one(
            cache, method, shots, seed, dict(options), spec.runs_root, spec.templates, spec.device, spec.force, shared
        )
        rows.append(row)
        if on_run is not None:
            on_run(row)
    return rows


def _spec(jobs: list[Job], unit: list[int], cache, runs_root, templates, device, force) -> UnitSpec:
    todo = tuple((jobs[i].method, tuple(jobs[i].opts.items()), jobs[i].shots, jobs[i].seed) for i in unit)
    return UnitSpec(str(cache.path), todo, str(runs_root), templates, device, force)


ProgressFn = Callable[[int, int, dict, Job], None]  # (done, total of this shard, run row, job)


def benchmark(
    datasets,
    backbones,
    methods,
    shots=PROTOCOL_SHOTS,
    seeds=PROTOCOL_SEEDS,
    *,
    options: dict | None = None,
    max_iterations: int | None = None,
    templates: str | None = None,
    cache_dir=None,
    runs_root=None,
    device: str = "auto",
    force: bool = False,
    shard: str | Shard | None = None,
    jobs: int = 1,
    extract: Callable[[str, str], object] | None = None,
    add_text: Callable[[str, str, Path], object] | None = None,
    progress: ProgressFn | None = None,
    before_training: Callable[[dict], None] | None = None,
) -> dict:
    """Run this process's shard of the benchmark; returns a summary (see the module docstring).

    `extract(dataset, backbone)` / `add_text(dataset, backbone, cache file)`: called for caches that are
    missing / lack per-template text a method needs, before the checks (``--extract``; the extraction stage
    is the caller's to pass, as :mod:`cmm_cache.extract` lies above this stage). In a sharded run nothing is
    extracted (several processes would write one cache): the error lists the commands to run once first.
    `progress(done, total, row, job)` follows the runs of this shard; `before_training(summary)` is called
    once the checks passed, before the first fit.
    """
    all_jobs = job_list(datasets, backbones, methods, shots, seeds, options, max_iterations)
    sh = shard if isinstance(shard, Shard) else resolve_shard(shard)
    dev = shard_device(device, sh)
    root = Path(runs_root) if runs_root is not None else paths.runs_dir(cache_dir)
    every = means_all(methods)
    prepared = _prepare(all_jobs, sh, cache_dir, templates, extract, add_text, blocks=not every)
    not_run: dict = {}
    if every:  # 'all': what a cache cannot serve is left out and listed, as compare does
        all_jobs, not_run = leave_out_unservable(all_jobs, cache_dir)
    checked = check_requirements(all_jobs, cache_dir=cache_dir, runs_root=root, templates=templates, force=force)
    refuse(checked.problems, all_jobs, extract_hint=extract is None)

    mine = shard_jobs(all_jobs, sh.index, sh.count)
    my_jobs = [i for u in mine for i in u]
    todo_units = [u for u in mine if force or not all(checked.finished.get(i) for i in u)]
    summary = {
        "jobs": len(all_jobs),
        "shard": {"index": sh.index, "count": sh.count, "source": sh.source},
        "device": dev,
        "processes": max(1, int(jobs)),
        "shard_jobs": len(my_jobs),
        "already_finished": sum(1 for i in my_jobs if checked.finished.get(i) and not force),
        "prepared": prepared,
        "not_run": not_run,
        "runs_root": str(root),
    }
    if before_training is not None:
        before_training(summary)

    job_of = {}  # (cache path, method, shots, seed) -> job index, to name a worker's rows
    specs = []
    for u in todo_units:
        cache = checked.caches[all_jobs[u[0]].cache_key]
        specs.append(_spec(all_jobs, u, cache, root, templates, dev, force))
        for i in u:
            job_of[(str(cache.path), all_jobs[i].method, all_jobs[i].shots, all_jobs[i].seed)] = i
    total = sum(len(s.jobs) for s in specs)
    rows: list[dict] = []

    def done(row: dict, spec: UnitSpec) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), total, row, all_jobs[job_of[(spec.cache, row["method"], row["shots"], row["seed"])]])

    if max(1, int(jobs)) == 1 or len(specs) <= 1:
        for n, spec in enumerate(specs):
            key = all_jobs[todo_units[n][0]].cache_key
            run_unit(spec, checked.caches[key], on_run=lambda row, spec=spec: done(row, spec))
            nxt = all_jobs[todo_units[n + 1][0]].cache_key if n + 1 < len(specs) else None
            if nxt != key:  # this cache's units are done: let its test features go
                checked.caches[key]._test.clear()
    else:
        from cmm_cache.util.parallel import parallel_map, usable_cores

        threads = max(1, usable_cores() // int(jobs))
        parallel_map(
            run_unit,
            specs,
            processes=int(jobs),
            on_result=lambda n, unit_rows: [done(r, specs[n]) for r in unit_rows],
            threads_per_process=threads,
        )
    status = finished_runs(all_jobs, checked, root, templates)
    summary.update(
        {
            "ran": sum(1 for r in rows if not r.get("skipped")),
            "skipped": sum(1 for r in rows if r.get("skipped")) + sum(len(u) for u in mine if u not in todo_units),
            "finished": sum(status.values()),
            "complete": all(status.values()),
            "runs": rows,
            "run_folders": [str(checked.where[i]) for i in range(len(all_jobs)) if status.get(i)],
        }
    )
    return summary


def finished_runs(jobs: list[Job], checked: Checked, root, templates) -> dict[int, bool]:
    """Per job of the whole list: whether its run folder now holds its run (other shards' work included)."""
    out = {}
    for i, j in enumerate(jobs):
        cache = checked.caches[j.cache_key]
        m, opts = resolve_method(j.method, j.opts)
        ident = planned_identity(cache, m, opts, templates, j.shots, j.seed)
        try:
            out[i] = check_target(target_dir(cache, ident, root), ident) == "same"
        except CmmError:
            out[i] = False
    return out


def leave_out_unservable(jobs: list[Job], cache_dir=None) -> tuple[list[Job], dict]:
    """The jobs of an 'all' benchmark less those of methods whose inputs a cache lacks (block inputs: a cache
    extracted without ``--finetune-blocks``), and what was left out: {"dataset × backbone": {method: why}}.

    Every shard reads the same caches (nothing is extracted in a sharded run), so every shard leaves out the same
    jobs and the job list stays one list. A missing or unreadable cache is left to the checks to report."""
    keep, not_run = [True] * len(jobs), {}
    for (dataset, backbone), idx in _by_cache(jobs).items():
        if cache_missing(dataset, backbone, cache_dir):
            continue
        try:
            cache = open_cache(find_cache(dataset, backbone, cache_dir))
            lacking = block_inputs_lacking(cache)
        except CmmError:
            continue
        if lacking is None:
            continue
        for i in idx:
            if get_method(jobs[i].method).inputs == "block_inputs":
                keep[i] = False
                why = (
                    f"the cache lacks {lacking}; to include it, re-extract (runs on features stay valid): "
                    f"cmm-cache extract --dataset {dataset} --backbone {backbone} --out {cache.path} "
                    "--finetune-blocks 1 --force"
                )
                not_run.setdefault(f"{dataset} × {backbone}", {})[jobs[i].method] = why
    return [j for j, k in zip(jobs, keep) if k], not_run


def _prepare(jobs: list[Job], sh: Shard, cache_dir, templates, extract, add_text, blocks: bool = True) -> list[dict]:
    """``--extract``: extract missing caches and add per-template text where a method needs it (one process).

    A missing cache is extracted with block inputs (``--finetune-blocks 1``) when `blocks` and one of its jobs'
    methods trains on them: a method named explicitly, never 'all' (block inputs take gigabytes: the docs give
    sizes). A cache that exists without them is not re-extracted: the checks give the command."""
    if extract is None and add_text is None:
        return []
    todo = []
    for (dataset, backbone), idx in _by_cache(jobs).items():
        if cache_missing(dataset, backbone, cache_dir):
            k = 1 if blocks and any(get_method(jobs[i].method).inputs == "block_inputs" for i in idx) else 0
            todo.append(("extract", dataset, backbone, k))
            continue
        try:
            cache = open_cache(find_cache(dataset, backbone, cache_dir))
        except CmmError:
            continue  # the checks report it
        methods = {jobs[i].method for i in idx}
        if any(u.need == "per_template_text" for m in methods for u in _unmet(m, cache, templates)):
            todo.append(("add-text", dataset, backbone, cache.path))
    if not todo:
        return []
    if sh.count > 1:
        raise CmmError(
            f"--extract in a sharded benchmark (shard {sh}): {len(todo)} cache(s) to extract or extend, which "
            "several processes would write at once.",
            "Extract first, in one process (then start the shards):\n"
            + "\n".join(
                f"  cmm-cache extract --dataset {d} --backbone {b}"
                + (" --add-text" if what == "add-text" else f" --finetune-blocks {x}" if x else "")
                for what, d, b, x in todo
            ),
        )
    done = []
    for what, dataset, backbone, arg in todo:
        if what == "extract" and extract is not None:
            if arg:
                extract(dataset, backbone, finetune_blocks=arg)
            else:
                extract(dataset, backbone)
            done.append(
                {
                    "did": "extract",
                    "dataset": dataset,
                    "backbone": backbone,
                    **({"finetune_blocks": arg} if arg else {}),
                }
            )
        elif what == "add-text" and add_text is not None:
            add_text(dataset, backbone, arg)
            done.append({"did": "add-text", "dataset": dataset, "backbone": backbone})
    return done


def _unmet(method: str, cache, templates) -> list[Unmet]:
    return unmet_needs(get_method(method), cache, templates)
