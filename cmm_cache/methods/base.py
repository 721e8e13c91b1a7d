"""The method contract: what a method learns from, what it returns, and how it is declared.

Every method sees the same :class:`FitData` of one (shots, seed) subset — the
few-shot train features (every view a sample), the few-shot *val* features and
the class text features — and returns a :class:`MethodResult` whose ``head``
(:mod:`cmm_cache.heads`) scores normalized image features. Test features are
not part of :class:`FitData`, so no method can select anything on them:
hyper-parameters are chosen on the few-shot val subset only, through
:mod:`cmm_cache.methods.search`.

A method is one module of this package that declares a :class:`Method` (found
by :mod:`cmm_cache.methods.registry`, no list to edit)::

    from cmm_cache.methods.registry import get_method
    method = get_method("cmm")
    result = method.fit(data, method.resolve({"iterations": 2000}), progress=None)

``progress(done, total, loss_or_None)`` is an optional callback for trained methods.

**Views.** A cache may hold more train views than the centre and its mirror (``extract --train-views N``:
``rrc-1``, ``rrc-2``, … seeded random-resized-crop views). Each method declares in :attr:`Method.views` the
views its paper trains on, as a spec :func:`resolve_views` reads against the cache's view names:

* ``"center,hflip"`` — named views (CMM, the cross-modal family, linear probing: Lin et al. and the CMM
  paper train on the centre crop and its mirror);
* ``"rrc:N"`` — the first N augmented views (GDA 10, Tip-Adapter 10, LP++ 1, CLAP 20, ProLIP 300: their
  codes' augmentation passes); ``"rrc"`` — all of them.

With fewer augmented views than asked it uses those there are; with none, the centre and mirror; either
way the run's ``warnings`` say so. The views used are recorded in ``result.json`` (``train_views``) and, when
they include augmented views, in the run's config (so its identity follows them).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from cmm_cache.errors import CmmError
from cmm_cache.evaluation.metrics import split_features
from cmm_cache.heads.base import Head, normalize_rows
from cmm_cache.methods.trainers.ops import flush_denormals

AUGMENTED = "rrc-"  # names of the augmented train views (cmm_cache.extract.encode.AUGMENTED_PREFIX)
CENTRE_MIRROR = "center,hflip"


@dataclass
class ViewChoice:
    """The train views a method uses on a cache (:func:`resolve_views`) and what the run should warn about."""

    names: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def augmented(self) -> bool:
        return any(n.startswith(AUGMENTED) for n in self.names)


def wanted_augmented(spec: str) -> int | None:
    """How many augmented views a spec asks for (None: all the cache has; 0: none)."""
    n = 0
    for item in str(spec).split(","):
        item = item.strip()
        if item == "rrc":
            return None
        if item.startswith("rrc:"):
            n += int(item[4:])
    return n


def _check_spec(items: list[str], spec) -> None:
    for item in items:
        if item.startswith("rrc:") and not (item[4:].isdigit() and int(item[4:]) > 0):
            raise CmmError(
                f"Bad train views {spec!r}: {item!r} should be rrc:N with N a positive number.",
                "Give view names (center,hflip,rrc-1,...), rrc:N (the first N augmented views) or rrc (all of them).",
            )
    if not items:
        raise CmmError(f"Bad train views {spec!r}: no view named.", "E.g. center,hflip or rrc:10.")


def resolve_views(spec: str, available: list[str], method: str = "this method") -> ViewChoice:
    """The views of `available` (a cache's train view names, in order) a view spec selects (see the module doc)."""
    items = [i.strip() for i in str(spec).split(",") if i.strip()]
    _check_spec(items, spec)
    aug = [v for v in available if v.startswith(AUGMENTED)]
    names: list[str] = []
    warnings: list[str] = []
    for item in items:
        if item == "rrc" or item.startswith("rrc:"):
            want = len(aug) if item == "rrc" else int(item[4:])
            got = aug[:want]
            if item != "rrc" and len(got) < want:
                more = f"`cmm-cache extract ... --add-views {want + 2}`"
                if got:
                    warnings.append(
                        f"{method} trains on {want} augmented views in its official code; the cache holds "
                        f"{len(aug)}, so it used those (add more with {more})"
                    )
                else:
                    warnings.append(
                        f"{method} trains on {want} augmented views in its official code; the cache holds none, so "
                        f"it used the centre and mirror views instead (add them with {more})"
                    )
            if not got:
                got = [v for v in ("center", "hflip") if v in available]
            names += got
        elif item in available:
            names.append(item)
        elif item not in ("center", "hflip"):  # a cache of another tool may lack the mirror: nothing to say
            warnings.append(f"the cache has no train view '{item}'")
    names = list(dict.fromkeys(names)) or list(available)
    return ViewChoice(names, warnings)


@dataclass
class FitData:
    """What a method may learn from: one few-shot subset of one cache (never its test split)."""

    x_train: torch.Tensor  # [N, d] L2-normalized; every (selected) view of every train image is its own sample
    y_train: torch.Tensor  # [N] class ids
    train_image: torch.Tensor  # [N] which train image each sample is a view of (0..n_images-1)
    x_val: torch.Tensor  # [n_val, d] L2-normalized, center view
    y_val: torch.Tensor  # [n_val]
    T0: torch.Tensor  # [C, d] class text features: template mean, L2-normalized (the zero-shot classifier)
    classnames: list[str]
    shots: int
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    templates: list[str] = field(default_factory=list)
    dataset: str = ""  # the cache's dataset name (some methods' published settings are per dataset)
    # Raw per-template text embeddings [C, M, d], loaded on demand (only some methods need them).
    _per_template: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    # Results several methods of this subset compute alike (owned by the runner; None: nothing is shared).
    _shared: SharedFits | None = field(default=None, repr=False)
    view_names: list[str] | None = None  # the views each train image contributes, in sample order (None: unnamed)
    train_norm: torch.Tensor | None = None  # [N] raw L2 norm of each train sample (raw = x_train · norm)
    blocks: BlockData | None = None  # cached block inputs (caches extracted with --finetune-blocks)

    @property
    def num_classes(self) -> int:
        return int(self.T0.shape[0])

    @property
    def dim(self) -> int:
        return int(self.T0.shape[1])

    @property
    def num_images(self) -> int:
        return int(self.train_image.max()) + 1 if len(self.train_image) else 0

    @property
    def views_per_image(self) -> int:
        return len(self.x_train) // max(1, self.num_images)

    def by_view(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Train samples (or any [N, ...] tensor in sample order) as [V, n_images, ...]: view-major."""
        x = self.x_train if x is None else x
        return x.reshape(self.num_images, self.views_per_image, *x.shape[1:]).transpose(0, 1)

    def select_views(self, names: list[str]) -> FitData:
        """The same subset with only the named views (in that order) as train samples."""
        have = self.view_names or []
        if list(names) == list(have):
            return self
        missing = [n for n in names if n not in have]
        if missing:
            raise CmmError(f"The train features hold no view {', '.join(missing)} (they hold {', '.join(have)}).")
        pos = torch.tensor([have.index(n) for n in names], device=self.x_train.device)
        n, V = self.num_images, self.views_per_image

        def pick(t):
            return t.reshape(n, V, *t.shape[1:])[:, pos].reshape(n * len(names), *t.shape[1:])

        from dataclasses import replace

        return replace(
            self,
            x_train=pick(self.x_train),
            y_train=pick(self.y_train),
            train_image=pick(self.train_image),
            train_norm=None if self.train_norm is None else pick(self.train_norm),
            view_names=list(names),
        )

    def text_per_template(self) -> torch.Tensor:
        """[C, M, d] raw embedding of each template (float32, on `device`); a clear error when the cache lacks them."""
        if self._per_template is None:
            raise CmmError(
                "This method needs per-template text embeddings, and none were given.",
                "Use a cache written by `cmm-cache extract` (or add them with `extract --add-text`).",
            )
        return torch.from_numpy(np.asarray(self._per_template(), dtype=np.float32)).to(self.device)

    def shared(self, name: str, depends: dict, compute: Callable[[], object]):
        """``compute()``, or its result when another method of this subset already computed it.

        `name` says what it is (one of the method's :attr:`Method.shares`), `depends` everything it depends
        on beyond this subset (options, initial weights' recipe): two calls share a result only when both
        agree. The result is shared as it is: a method must not modify it in place. Without a runner-owned
        store (a lone ``fit``), this is ``compute()``.
        """
        if self._shared is None:
            return compute()
        return self._shared.get(name, depends, compute)


class SharedFits:
    """Intermediate results that several methods fitted on one few-shot subset compute alike, computed once.

    The runner (:mod:`cmm_cache.runs.compare`, :mod:`cmm_cache.runs.benchmark`) owns one store per (cache,
    shots, seed, templates, device) and hands it to every :class:`FitData` of that subset; a method reaches it
    through :meth:`FitData.shared`. Keys are (name, the canonical JSON of what the result depends on), so a
    method with other options gets its own result. :attr:`log` records, per key, whether it was computed here
    or reused, and how long computing it took (a reused fit costs its second user nothing).
    """

    def __init__(self):
        self._store: dict[tuple[str, str], tuple[object, float]] = {}
        self.log: list[dict] = []

    def get(self, name: str, depends: dict, compute: Callable[[], object]):
        key = (name, json.dumps(depends, sort_keys=True, separators=(",", ":"), default=str))
        reused = key in self._store
        if not reused:
            t0 = time.perf_counter()
            value = compute()
            self._store[key] = (value, time.perf_counter() - t0)
        value, seconds = self._store[key]
        self.log.append({"name": name, "reused": reused, "seconds": round(seconds, 3)})
        return value

    def take_log(self) -> list[dict]:
        """The uses since the last call (one method's fit), and forget them."""
        out, self.log = self.log, []
        return out


@dataclass
class MethodResult:
    """A fitted method: its head, what it chose on val, and what it cost."""

    head: Head
    hparams: dict  # hyper-parameters chosen on the val subset (and fixed ones that matter)
    val_acc: float  # accuracy (%) of `head` on the val subset
    fit_seconds: float
    iterations: int | None = None  # optimizer steps, for trained methods
    extra: dict = field(default_factory=dict)  # e.g. final loss, the val search table


@dataclass(frozen=True)
class Method:
    """A registered method: ``fit(data, options, progress=None) -> MethodResult``.

    ``options`` are the user's settings (CLI flags or Python kwargs); ``defaults``
    lists every option with its default so a run's resolved config is complete.
    """

    name: str
    fit: Callable[..., MethodResult]
    defaults: dict
    summary: str
    source: str  # the paper / official code it follows
    trained: bool = False  # iterative (reports iterations and time) vs closed form / search only
    runtime_options: tuple = ()  # options that change speed, not results (left out of a run's identity)
    budget: str | None = None  # the option that bounds its optimizer steps (what `compare --max-iterations` caps)
    rank: int = 50  # where it stands in `compare --methods all` and tables: simple baselines first, CMM last
    selection: str = "few-shot val"  # how it chooses its hyper-parameters (shown in the methods table)
    # What a cache must hold besides features, text and few-shot subsets (names of NEEDS, e.g.
    # "per_template_text", "views:4"): checked for every run before any run trains.
    needs: tuple = ()
    # Intermediate results it computes through FitData.shared, by name: runs of methods that share a name on
    # one subset are kept in one process so the result is computed once.
    shares: tuple = ()
    # Expected cost of one run at its default options: the fit seconds `cmm-cache bench compare --shots 16
    # --seeds 1` measured on a DTD-sized synthetic cache (47 classes, 1024-d) on a busy 2-core CPU; trained
    # methods scale it by the fraction of their budget a cap leaves. Only balances benchmark shards
    # (runs/benchmark.py); it never changes a result.
    cost: float = 1.0
    # precheck(data, options) raises CmmError when the method cannot fit this subset with these options
    # (e.g. no batch size fits): called for every run before any run trains.
    precheck: Callable[[FitData, dict], None] | None = None
    views: str = CENTRE_MIRROR  # the train views its paper uses (a spec for resolve_views; see the module doc)
    inputs: str = "features"  # "block_inputs": it trains on cached block inputs (extract --finetune-blocks)

    def resolve(self, options: dict | None) -> dict:
        """Defaults overlaid with `options`; an unknown option is one clear error."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise CmmError(
                f"Method '{self.name}' has no option {', '.join(unknown)}.",
                f"Its options: {', '.join(sorted(self.defaults)) or 'none'}.",
            )
        return {**self.defaults, **options}

    def capped(self, options: dict | None, cap: int | None) -> dict:
        """`options` with the optimizer steps of one run capped at `cap` (smoke tests, CI); closed-form
        methods (no :attr:`budget`) are unchanged. A budget of None (the method's own default) becomes `cap`."""
        opts = dict(options or {})
        if cap is None or self.budget is None:
            return opts
        have = opts.get(self.budget, self.defaults.get(self.budget))
        opts[self.budget] = int(cap) if have is None else min(int(cap), int(have))
        return opts

    def expected_cost(self, options: dict | None = None) -> float:
        """:attr:`cost` scaled by the share of its default budget that `options` leave (a capped run costs less)."""
        opts = self.resolve(options)
        full = self.defaults.get(self.budget) if self.budget else None
        if not full or opts.get(self.budget) is None:
            return float(self.cost)
        return float(self.cost) * min(1.0, max(int(opts[self.budget]), 1) / int(full))


# ----------------------------------------------------------------------------
# What a method needs from a cache (checked before anything trains)


@dataclass(frozen=True)
class Unmet:
    """A need a cache does not meet: what is missing and the command that adds it."""

    need: str
    message: str
    command: str


def _per_template_text(cache, templates: str | None) -> str | None:
    name = templates or cache.default_templates
    if name in cache.text_sets and cache.has_per_template(name):
        return None
    return f"per-template text embeddings of template set '{name}' (text/{name}/per_template)"


def _views(cache, templates: str | None, n: int) -> str | None:
    views = cache.split("train").views
    return None if len(views) >= n else f"{n} train views per image (it holds {len(views)}: {', '.join(views)})"


BLOCK_SPLITS = ("train", "val", "test")  # a method on block inputs trains, selects and is scored on them


def block_inputs_lacking(cache) -> str | None:
    """What block inputs `cache` lacks, in words (None: it holds them for train, val and test)."""
    lacking = [s for s in BLOCK_SPLITS if not cache.has_blocks(s)]
    return f"block inputs for {', '.join(lacking)}" if lacking else None


def method_needs(method: Method) -> tuple:
    """Everything `method` needs from a cache: its :attr:`Method.needs` and, for a method that trains on block
    inputs (:attr:`Method.inputs`), ``block_inputs``: one list, so every command checks the same things."""
    return (*method.needs, *(("block_inputs",) if method.inputs == "block_inputs" else ()))


def unmet_needs(method: Method, cache, templates: str | None = None) -> list[Unmet]:
    """The needs of `method` (:func:`method_needs`) that `cache` does not meet, each with the command that adds it.

    ``per_template_text``: the cache's ``text/<set>/per_template`` node (``extract --add-text`` adds it);
    ``views:N``: at least N train views per image (``extract --add-views N`` adds them); ``block_inputs``: the
    inputs of the image tower's last blocks for train, val and test (only a new extraction with
    ``--finetune-blocks`` writes them). An unknown need is a programming error in the method's declaration.
    """
    out = []
    where = f"--dataset {cache.dataset} --backbone {cache.backbone}"
    for need in method_needs(method):
        kind, _, arg = str(need).partition(":")
        if kind == "per_template_text":
            miss = _per_template_text(cache, templates)
            cmd = f"cmm-cache extract {where} --out {cache.path} --add-text"
        elif kind == "views":
            miss = _views(cache, templates, int(arg))
            cmd = f"cmm-cache extract {where} --out {cache.path} --add-views {int(arg)}"
        elif kind == "block_inputs":
            miss = block_inputs_lacking(cache)
            cmd = f"cmm-cache extract {where} --out {cache.path} --finetune-blocks 1 --force"
        else:
            raise ValueError(f"method {method.name!r} declares an unknown need {need!r}")
        if miss:
            out.append(Unmet(str(need), f"{cache.path} lacks {miss}, which {method.name} needs", cmd))
    return out


@contextmanager
def fit_scope(data: FitData, single_thread: bool = False):
    """How every baseline computes: one CPU thread below d = 768 and subnormals flushed
    (:func:`cmm_cache.methods.trainers.ops.flush_denormals`); the caller's settings are restored afterwards.

    Their steps are many small ops: on a 2-core machine shared with other work every two-thread
    parallel region waits for a descheduled peer (measured: one L-BFGS fit at 37 classes × 512-d
    took 0.05 s on one thread and up to 10 s on two while another process ran).
    """
    threads = torch.get_num_threads()
    if data.device.type == "cpu" and (single_thread or data.dim < 768):
        torch.set_num_threads(1)
    try:
        with flush_denormals(data.device.type == "cpu"):
            yield
    finally:
        torch.set_num_threads(threads)


def scoped(fit: Callable[..., MethodResult] | None = None, *, single_thread: bool = False):
    """Decorator: run a method's ``fit(data, options, progress)`` inside :func:`fit_scope`.

    ``@scoped(single_thread=True)`` for methods whose steps are small ops at any d (L-BFGS on a
    linear head, Lin et al.'s batched heads): one thread costs at most 2× on an idle machine and
    saves 10× on a busy one (measured at 47 classes × 1024-d: linear probe 1.0 s on one thread vs
    14 s on two under load; 12,800 steps of the 12 cross-modal heads ~22 s on one thread, ~12 s
    on two when idle, 190-280 s on two while other processes ran).
    """

    def wrap(f):
        @functools.wraps(f)
        def inner(data: FitData, options: dict, progress=None) -> MethodResult:
            with fit_scope(data, single_thread):
                return f(data, options, progress)

        return inner

    return wrap(fit) if fit is not None else wrap


@dataclass
class BlockData:
    """The cached block inputs of one few-shot subset (``extract --finetune-blocks``), read on demand.

    ``cut``: the cache's ``blocks`` attr (arch, blocks, input_shape, fingerprints, config);
    ``weights()``: the weights above the cut as extracted (where fine-tuning starts); ``train()``: float16
    [n_images, Vb, *shape] with views ``train_views`` (centre, mirror); ``val()``: float16 [n_val, *shape]
    (centre view)."""

    cut: dict
    train_views: list[str]
    weights: Callable[[], dict]
    train: Callable[[], np.ndarray]
    val: Callable[[], np.ndarray]


def block_data(cache, train_rows, val_rows) -> BlockData | None:
    """The :class:`BlockData` of a subset, or None when the cache holds no block inputs."""
    if not cache.has_blocks("train") or not cache.has_blocks("val"):
        return None
    val_views = cache.block_views("val")
    c = val_views.index("center") if "center" in val_views else 0
    return BlockData(
        cut=cache.block_cut(),
        train_views=cache.block_views("train"),
        weights=cache.block_weights,
        train=lambda: cache.block_inputs("train", train_rows),
        val=lambda: cache.block_inputs("val", val_rows)[:, c],
    )


def fit_data(
    cache,
    shots: int,
    seed: int,
    templates: str | None = None,
    device="cpu",
    shared: SharedFits | None = None,
    views: list[str] | None = None,
) -> FitData:
    """The :class:`FitData` of one (shots, seed) subset of an open cache (train and val only); `shared` is the
    runner's store of results the methods of this subset share (:class:`SharedFits`); `views`: the train views
    to hold (names; default: every view the cache has)."""
    dev = torch.device(device)
    train_rows, val_rows = cache.fewshot(shots, seed)
    train = cache.split("train")
    names = list(train.views) if views is None else list(views)
    pos = [train.views.index(v) for v in names]
    feats = train.features[train_rows][:, pos]
    x, y = train_samples(feats, train.labels[train_rows], dev)
    norm = torch.from_numpy(np.linalg.norm(feats.astype(np.float32), axis=-1).reshape(-1)).to(dev)
    image = torch.arange(len(train_rows)).repeat_interleave(feats.shape[1]).to(dev)
    T0 = torch.from_numpy(cache.text(templates)).to(dev)
    if x.shape[1] != T0.shape[1]:
        raise CmmError(
            f"{cache.path}: image features are {x.shape[1]}-d but text features {T0.shape[1]}-d.",
            "The cache is inconsistent; re-extract it.",
        )
    x_val, y_val = split_features(cache.split("val"), val_rows, dev)
    name = templates or cache.default_templates
    return FitData(
        x_train=x,
        y_train=y,
        train_image=image,
        x_val=x_val,
        y_val=y_val,
        T0=T0,
        classnames=list(cache.classnames),
        shots=int(shots),
        seed=int(seed),
        device=dev,
        templates=cache.templates(name),
        dataset=str(cache.dataset),
        _per_template=lambda: cache.text_per_template(name),
        _shared=shared,
        view_names=names,
        train_norm=norm,
        blocks=block_data(cache, train_rows, val_rows),
    )


def train_samples(features: np.ndarray, labels: np.ndarray, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V, d] float16 cache rows -> ([n·V, d] normalized float32, [n·V] labels).

    Every view (center and hflip) of every train image is its own sample, as in
    the paper; normalizing once here keeps it out of the 16k-step loop.
    """
    n, v, d = features.shape
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).reshape(n * v, d)
    y = torch.from_numpy(np.repeat(np.asarray(labels, dtype=np.int64), v))
    return normalize_rows(x).to(device), y.to(device)
