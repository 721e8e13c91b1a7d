"""Pictures of the modality gap: 2-D projections (dots = images, triangles = text prototypes) and
CMM's Fig. 7 similarity histograms, for one or several feature sets side by side.

A "set" is one (image features, labels, class prototypes) triple — "before" (v̂ against T0),
"after" (normalize(v̂W + v̂) against T) or one panel per ablation run. All sets of a figure are
projected **jointly** (one PCA basis, or one t-SNE/UMAP embedding of all points), so the panels share
axes and a point that moves between "before" and "after" moves on the page.

* **PCA is the default** because it is linear: the offset between the two modalities (the gap) is a
  direction in feature space and stays a visible offset in the picture. t-SNE and UMAP keep
  neighbourhoods, not distances, and may show two clouds far apart or on top of each other whatever
  the gap is; they are there on request (t-SNE from scikit-learn, UMAP from umap-learn).
* matplotlib (the ``plot`` extra), scikit-learn and umap-learn are imported only inside the
  functions that need them; a missing one is a :class:`CmmError` naming what to install. Figures are
  built on ``matplotlib.figure.Figure`` directly — no pyplot, no global backend switch, nothing left
  open in the caller's process.
* A picture file is written to a temporary sibling and renamed at the end: the path holds either
  the previous file or the complete new one, never half a PNG.

Entry points: :func:`draw_gap` (everything from features in one call — what ``cmm-cache gap --plot``
needs), or the steps: :func:`select_classes`, :func:`subset`, :func:`project_joint` /
:func:`project_2d`, :func:`plot_projection`, :func:`plot_similarity_histograms`, :func:`plot_gap`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CmmError
from . import gap

PLOT_FORMATS = (".png", ".svg")
PROJECTIONS = ("pca", "tsne", "umap")
PROJECTION_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
PLOT_HINT = "Install the plot extra: pip install 'cmm-cache[plot]' (or pip install matplotlib)."
TSNE_HINT = "t-SNE needs scikit-learn: pip install 'cmm-cache[plot]' (or pip install scikit-learn); or use PCA."
UMAP_HINT = "UMAP needs umap-learn, which is optional: pip install umap-learn; or use PCA (the default) or t-SNE."

HIST_COLORS = {"matched": "#2ca02c", "mismatched": "#d62728", "image_image": "#1f77b4"}
HIST_LABELS = {
    "matched": "matched image–text",
    "mismatched": "mismatched image–text",
    "image_image": "image–image (different classes)",
}
MAX_CLASS_LEGEND = 12  # more class names than this make an unreadable legend; colours alone then
MAX_LINKS = 40  # centre→prototype lines for at most this many classes


# ----------------------------------------------------------------------------
# Panels


@dataclass
class ProjectionPanel:
    """One 2-D scatter: image dots coloured by class, one triangle per class prototype.

    ``labels[i]`` in [0, k) is the row of ``text_2d`` [k, 2] that belongs to image i.
    """

    name: str
    image_2d: np.ndarray
    labels: np.ndarray
    text_2d: np.ndarray
    note: str = ""

    def __post_init__(self):
        self.image_2d = np.asarray(self.image_2d, dtype=np.float64)
        self.text_2d = np.asarray(self.text_2d, dtype=np.float64)
        self.labels = np.asarray(self.labels)
        for what, a in (("image_2d", self.image_2d), ("text_2d", self.text_2d)):
            if a.ndim != 2 or a.shape[1] != 2:
                raise CmmError(f"panel '{self.name}': {what} must be [rows, 2]; got shape {a.shape}.")
            if not np.isfinite(a).all():
                raise CmmError(f"panel '{self.name}': {what} holds non-finite coordinates.")
        if self.labels.shape != (len(self.image_2d),) or not np.issubdtype(self.labels.dtype, np.integer):
            raise CmmError(f"panel '{self.name}': labels must be {len(self.image_2d)} integers, one per image.")
        k = len(self.text_2d)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= k):
            raise CmmError(f"panel '{self.name}': labels must index its {k} prototypes, 0..{k - 1}.")


@dataclass
class HistogramPanel:
    """One set's Fig. 7 distributions: {"matched", "mismatched", "image_image"} → arrays of cosines."""

    name: str
    values: dict
    note: str = ""

    def __post_init__(self):
        missing = [k for k in gap.DISTRIBUTIONS if k not in self.values]
        if missing:
            raise CmmError(
                f"histogram panel '{self.name}' lacks {', '.join(missing)}.",
                "Pass the values of gap.similarity_distributions(..., return_values=True).",
            )
        self.values = {k: np.asarray(self.values[k], dtype=np.float64).ravel() for k in gap.DISTRIBUTIONS}


@dataclass
class GapSet:
    """One set of features to picture: a column of :func:`draw_gap`'s figure.

    ``values`` may carry the Fig. 7 values if they were already computed
    (``gap.similarity_distributions(..., return_values=True)[1]``); otherwise they are computed here.
    """

    name: str
    image: object
    labels: object
    text: object
    note: str = ""
    values: dict | None = field(default=None, repr=False)


def _panels(panels, kind):
    out = [p if isinstance(p, kind) else kind(*p) for p in panels]
    if not out:
        raise CmmError("Nothing to draw: no panels were given.")
    return out


# ----------------------------------------------------------------------------
# Titles


def figure_title(*, dataset=None, backbone=None, method=None, shots=None, seed=None, split=None) -> str:
    """ "DTD · RN50 · cmm · 16 shots · seed 1 · test split": what a reader needs to place the picture."""
    parts = [str(dataset) if dataset else None, str(backbone) if backbone else None, str(method) if method else None]
    if shots is not None:
        parts.append(f"{shots} shot{'s' if shots != 1 else ''}")
    if seed is not None:
        parts.append(f"seed {seed}")
    if split:
        parts.append(f"{split} split")
    return " · ".join(p for p in parts if p)


def measure_note(measures: dict) -> str:
    """A one-line summary of :func:`gap.gap_measures` for a panel's subtitle."""
    pg = measures["prototype_gap"]
    return f"L2M {measures['l2m']:.3f} · prototype gap {pg['l2']:.3f} (cos {pg['cos']:.3f}) · RMG {measures['rmg']:.3f}"


# ----------------------------------------------------------------------------
# Choosing what to draw


def select_classes(labels, num_classes: int | None, *, seed: int = 0) -> np.ndarray:
    """Class ids to draw: all present ones, or a seeded sample of ``num_classes`` of them (sorted).

    A picture of 1,000 classes is a cloud of indistinguishable colours; ``--classes 10`` is readable.
    """
    y = np.asarray(gap._as_tensor(labels, "labels").cpu())
    present = np.unique(y)
    if num_classes is None or num_classes >= len(present):
        return present
    if num_classes < 1:
        raise CmmError(f"Number of classes to draw must be at least 1; got {num_classes}.")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    return np.sort(rng.choice(present, size=int(num_classes), replace=False))


def subset(image, labels, text, classes, *, max_per_class: int | None = None, seed: int = 0):
    """(image [m, d], labels remapped to 0..k−1 [m], text [k, d]) for the chosen ``classes`` (k of them).

    ``max_per_class`` keeps a seeded sample of each class's images (t-SNE on 50,000 points is slow and
    unreadable; 50 per class shows the shape). Rows keep their order.
    """
    v = gap._features(image, "image features", check_finite=False)
    t = gap._features(text, "text prototypes", check_finite=False)
    y = gap._labels(labels, v.shape[0], t.shape[0]).cpu().numpy()
    classes = np.asarray(classes, dtype=np.int64)
    if classes.ndim != 1 or len(classes) == 0 or classes.min() < 0 or classes.max() >= t.shape[0]:
        raise CmmError(f"classes must be ids in [0, {t.shape[0]}); got {classes.tolist()[:10]}.")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    keep = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        if max_per_class is not None and len(rows) > max_per_class:
            rows = np.sort(rng.choice(rows, size=int(max_per_class), replace=False))
        keep.append(rows)
    rows = np.sort(np.concatenate(keep))
    remap = np.full(t.shape[0], -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    idx = gap._as_tensor(rows, "rows").to(v.device)
    return v.index_select(0, idx), remap[y[rows]], t[gap._as_tensor(classes, "classes").to(t.device)]


# ----------------------------------------------------------------------------
# Projection


def _pca(X: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """Top-2 principal components of X [m, d] (centred on the joint mean), signs fixed, % variance in labels."""
    Xc = X - X.mean(0)
    cov = Xc.T @ Xc / max(len(X) - 1, 1)
    w, U = np.linalg.eigh(cov)  # ascending
    U, w = U[:, ::-1][:, :2], w[::-1]
    # a deterministic sign: the largest loading of each component positive (eigh's sign is arbitrary)
    U = U * np.sign(U[np.abs(U).argmax(0), [0, 1]])
    share = w[:2] / w.sum() * 100 if w.sum() > 0 else np.zeros(2)
    return Xc @ U, (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")


def _tsne(X: np.ndarray, seed: int) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise CmmError("The t-SNE projection needs scikit-learn, which is not installed.", TSNE_HINT) from None
    perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=int(seed)).fit_transform(X)


def _umap(X: np.ndarray, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise CmmError("The UMAP projection needs umap-learn, which is not installed.", UMAP_HINT) from None
    return umap.UMAP(n_components=2, random_state=int(seed)).fit_transform(X)


def project_joint(sets: Sequence, *, method: str = "pca", seed: int = 0):
    """Project several (image [n_s, d], text [k_s, d]) sets into one 2-D space.

    Rows are L2-normalized first (the space every gap measure lives in). ``pca``: one basis fitted on
    all points of all sets (so "before" and "after" share axes and the modality offset survives);
    ``tsne`` / ``umap``: one embedding of all points, seeded. Returns
    ([(image_2d, text_2d) per set], (x label, y label)).
    """
    method = str(method).lower()
    if method not in PROJECTIONS:
        raise CmmError(
            f"Unknown projection '{method}'.", f"Choose one of: {', '.join(PROJECTIONS)} (pca is the default)."
        )
    blocks, sizes, d = [], [], None
    for i, (image, text) in enumerate(sets):
        for what, a in (("image features", image), ("text prototypes", text)):
            x = gap.normalize(a).double().cpu().numpy()
            if d is not None and x.shape[1] != d:
                raise CmmError(f"set {i}: {what} have width {x.shape[1]}, other sets {d}: one space per figure.")
            d = x.shape[1]
            blocks.append(x)
            sizes.append(len(x))
    if not blocks:
        raise CmmError("Nothing to project: no sets were given.")
    X = np.concatenate(blocks)
    if method == "pca":
        if d < 2:
            raise CmmError(f"A 2-D picture needs features of width ≥ 2; got {d}.")
        Y, axes = _pca(X)
    elif method == "tsne":
        Y, axes = _tsne(X, seed), ("t-SNE 1", "t-SNE 2")
    else:
        Y, axes = _umap(X, seed), ("UMAP 1", "UMAP 2")
    parts = np.split(Y, np.cumsum(sizes)[:-1])
    return [(parts[2 * i], parts[2 * i + 1]) for i in range(len(parts) // 2)], axes


def project_2d(image, text, *, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image_2d, text_2d) of one set; see :func:`project_joint` for the methods."""
    (pair,), _ = project_joint([(image, text)], method=method, seed=seed)
    return pair


# ----------------------------------------------------------------------------
# Drawing


def _check_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise CmmError(
            f"Cannot write a picture as '{path.suffix or path.name}'.",
            f"Give a file name ending in {' or '.join(PLOT_FORMATS)}.",
        )
    return path


def check_plot_target(path, projection: str = "pca") -> Path:
    """Everything ``--plot`` needs, checked before any work: a .png/.svg name, a folder that exists (or can be
    made) and is writable, no folder already at that path, matplotlib, and the projection's package.

    Returns the path. Raises :class:`CmmError` with what to do, so a command fails in a second rather than
    after computing the measures.
    """
    path = _check_path(path)
    method = str(projection).lower()
    if method not in PROJECTIONS:
        raise CmmError(
            f"Unknown projection '{projection}'.", f"Choose one of: {', '.join(PROJECTIONS)} (pca is the default)."
        )
    if path.is_dir():
        raise CmmError(f"--plot {path} is a folder.", "Give a file name ending in .png or .svg.")
    if path.exists() and not path.is_file():
        raise CmmError(f"--plot {path} exists and is not a regular file.", "Give another file name.")
    folder = path.absolute().parent
    probe = folder
    while not probe.exists():  # the first folder that exists must let us create the rest and the file
        probe = probe.parent
    if not probe.is_dir():
        raise CmmError(f"Cannot write {path}: {probe} is not a folder.", "Give a path inside a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "its folder" if probe == folder else f"{probe}, where its folder would be made,"
        raise CmmError(f"Cannot write {path}: {where} is not writable.", "Give a path in a folder you can write to.")
    _figure_class()
    if method == "tsne":
        try:
            import sklearn.manifold  # noqa: F401
        except ImportError:
            raise CmmError("The t-SNE projection needs scikit-learn, which is not installed.", TSNE_HINT) from None
    elif method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise CmmError("The UMAP projection needs umap-learn, which is not installed.", UMAP_HINT) from None
    return path


def _figure_class():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise CmmError("Drawing the gap pictures needs matplotlib, which is not installed.", PLOT_HINT) from None
    return Figure


def _save(fig, path: Path) -> Path:
    """Write to ``.<name>.tmp-<pid><suffix>`` beside the target, then rename over it (atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    fmt = path.suffix.lower()[1:]
    import matplotlib

    try:
        # SVG: text stays text (searchable, selectable, small) and no date (same picture, same bytes)
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cmm-cache"}):
            fig.savefig(tmp, format=fmt, dpi=130, metadata={"Date": None} if fmt == "svg" else None)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _class_colors(k: int):
    import matplotlib

    if k <= 10:
        base = matplotlib.colormaps["tab10"].colors
    elif k <= 20:
        base = matplotlib.colormaps["tab20"].colors
    else:
        return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, k))
    return np.asarray(base[:k])


def _draw_projection(ax, p: ProjectionPanel, colors, axis_labels, equal: bool):
    n, k = len(p.image_2d), len(p.text_2d)
    size = float(np.clip(3000.0 / max(n, 1), 3.0, 22.0))
    ax.scatter(
        p.image_2d[:, 0],
        p.image_2d[:, 1],
        c=colors[p.labels],
        s=size,
        alpha=0.55,
        linewidths=0,
        marker="o",
        rasterized=n > 2000,  # an SVG of 50,000 vector dots is unusable
    )
    if k <= MAX_LINKS:  # each class's image centre → its prototype: the per-class gap, seen
        for c in range(k):
            rows = p.labels == c
            if rows.any():
                cx, cy = p.image_2d[rows].mean(0)
                ax.plot([cx, p.text_2d[c, 0]], [cy, p.text_2d[c, 1]], color=colors[c], lw=0.9, ls="--", alpha=0.8)
    ax.scatter(
        p.text_2d[:, 0],
        p.text_2d[:, 1],
        c=colors[:k],
        s=150 if k <= 50 else 60,
        marker="^",
        edgecolors="black",
        linewidths=1.0,
        zorder=3,
    )
    ax.set_title(p.name + (f"\n{p.note}" if p.note else ""), fontsize=10)
    ax.set_xlabel(axis_labels[0], fontsize=9)
    ax.set_ylabel(axis_labels[1], fontsize=9)
    ax.tick_params(labelsize=8)
    if equal:
        ax.set_aspect("equal", adjustable="box")  # "datalim" is refused on shared axes
    ax.grid(alpha=0.25)


def _marker_legend(k: int):
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color="0.45", markersize=6, label="dot = image (colour = class)"),
        Line2D([], [], marker="^", ls="", color="0.75", markeredgecolor="black", markersize=10,
               label="triangle = text prototype of that class"),
    ]  # fmt: skip
    if k <= MAX_LINKS:
        handles.append(Line2D([], [], ls="--", color="0.45", label="dashes: class's image centre → its prototype"))
    return handles


def _class_legend(ax, class_names, colors, k):
    from matplotlib.lines import Line2D

    if class_names is None or k > MAX_CLASS_LEGEND:
        return
    if len(class_names) != k:
        raise CmmError(f"{len(class_names)} class names for {k} classes drawn.", "Pass the names of the drawn classes.")
    handles = [
        Line2D([], [], marker="s", ls="", color=colors[c], markersize=8, label=str(class_names[c])) for c in range(k)
    ]
    ax.legend(
        handles=handles, title="class", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5)
    )


def _draw_histograms(ax, p: HistogramPanel, bins, first: bool):
    for name in gap.DISTRIBUTIONS:
        vals, col = p.values[name], HIST_COLORS[name]
        if vals.size == 0:
            continue
        ax.hist(vals, bins=bins, density=True, histtype="stepfilled", alpha=0.30, color=col, label=HIST_LABELS[name])
        ax.hist(vals, bins=bins, density=True, histtype="step", color=col, lw=1.2)
        ax.axvline(float(vals.mean()), color=col, ls="--", lw=1.0)
    ax.set_title(p.name + (f"\n{p.note}" if p.note else ""), fontsize=10)
    ax.set_xlabel("cosine similarity (dashed: mean)", fontsize=9)
    if first:
        ax.set_ylabel("density", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)


def _bins(panels: list[HistogramPanel]) -> np.ndarray:
    vals = [v for p in panels for v in p.values.values() if v.size]
    if not vals:
        return np.linspace(-1, 1, 81)
    lo = max(-1.0, min(float(v.min()) for v in vals))
    hi = min(1.0, max(float(v.max()) for v in vals))
    pad = max(0.02, 0.03 * (hi - lo))
    return np.linspace(max(-1.0, lo - pad), min(1.0, hi + pad), 81)


def _suptitle(fig, title: str, subtitle: str):
    text = "\n".join(s for s in (title, subtitle) if s)
    if text:
        fig.suptitle(text, fontsize=11)


def plot_projection(
    panels: Sequence, path, *, title: str = "", class_names=None, axis_labels=("PC 1", "PC 2"), equal_aspect=None
) -> Path:
    """One row of 2-D scatters (before | after, or one per ablation), shared axes, as PNG or SVG.

    ``panels``: :class:`ProjectionPanel` or tuples (name, image_2d, labels, text_2d[, note]); all panels
    must have the same k prototypes (same classes, same colours). ``class_names`` (k of them) adds a
    colour legend when k ≤ 12. ``equal_aspect`` defaults to True for PCA axes (distances are real).
    """
    path = _check_path(path)
    Figure = _figure_class()
    panels = _panels(panels, ProjectionPanel)
    k = _same_k(panels)
    fig = Figure(figsize=(4.4 * len(panels) + 2.0, 4.9), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0])
    colors = _class_colors(k)
    equal = axis_labels[0].startswith("PC") if equal_aspect is None else bool(equal_aspect)
    for ax, p in zip(axs, panels):
        _draw_projection(ax, p, colors, axis_labels, equal)
    _class_legend(axs[-1], class_names, colors, k)
    fig.legend(handles=_marker_legend(k), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    _suptitle(fig, title, "")
    return _save(fig, path)


def plot_similarity_histograms(panels: Sequence, path, *, title: str = "") -> Path:
    """CMM's Fig. 7 for each set: the three cosine distributions overlaid, shared bins, as PNG or SVG.

    ``panels``: :class:`HistogramPanel` or tuples (name, values[, note]) with values from
    ``gap.similarity_distributions(..., return_values=True)``.
    """
    path = _check_path(path)
    Figure = _figure_class()
    panels = _panels(panels, HistogramPanel)
    fig = Figure(figsize=(4.4 * len(panels) + 0.6, 3.9), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0])
    bins = _bins(panels)
    for i, (ax, p) in enumerate(zip(axs, panels)):
        _draw_histograms(ax, p, bins, i == 0)
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    _suptitle(fig, title, "")
    return _save(fig, path)


def plot_gap(
    projection_panels: Sequence,
    histogram_panels: Sequence,
    path,
    *,
    title: str = "",
    class_names=None,
    axis_labels=("PC 1", "PC 2"),
    equal_aspect=None,
) -> Path:
    """Both pictures in one figure: projections on top, Fig. 7 histograms below, one column per set."""
    path = _check_path(path)
    Figure = _figure_class()
    pp = _panels(projection_panels, ProjectionPanel)
    hp = _panels(histogram_panels, HistogramPanel)
    if len(pp) != len(hp):
        raise CmmError(f"{len(pp)} projection panels but {len(hp)} histogram panels: one of each per set.")
    k = _same_k(pp)
    cols = len(pp)
    fig = Figure(figsize=(4.6 * cols + 2.0, 9.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1.0])
    axs = np.atleast_1d(top.subplots(1, cols, sharex=True, sharey=True, squeeze=False)[0])
    colors = _class_colors(k)
    equal = axis_labels[0].startswith("PC") if equal_aspect is None else bool(equal_aspect)
    for ax, p in zip(axs, pp):
        _draw_projection(ax, p, colors, axis_labels, equal)
    _class_legend(axs[-1], class_names, colors, k)
    top.legend(handles=_marker_legend(k), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    haxs = np.atleast_1d(bottom.subplots(1, cols, sharex=True, sharey=True, squeeze=False)[0])
    bins = _bins(hp)
    for i, (ax, p) in enumerate(zip(haxs, hp)):
        _draw_histograms(ax, p, bins, i == 0)
    handles, labels = haxs[0].get_legend_handles_labels()
    bottom.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    _suptitle(fig, title, "")
    return _save(fig, path)


def _same_k(panels: list[ProjectionPanel]) -> int:
    ks = {len(p.text_2d) for p in panels}
    if len(ks) != 1:
        raise CmmError(f"Panels draw different numbers of classes ({sorted(ks)}): draw the same classes in each.")
    return ks.pop()


# ----------------------------------------------------------------------------
# Everything in one call


def draw_gap(
    sets: Sequence,
    path,
    *,
    projection: str = "pca",
    num_classes: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    title: str = "",
    class_names=None,
    max_pairs: int = gap.DEFAULT_MAX_PAIRS,
) -> Path:
    """The ``--plot`` picture: for each set a projection (top) and its Fig. 7 histograms (below).

    ``sets``: :class:`GapSet` or tuples (name, image [n, d], labels [n], text [C, d][, note]). The drawn
    classes (``num_classes`` of them, seeded; all by default) are the same in every panel, chosen
    among the first set's labels; ``max_per_class`` thins the dots (seeded). The histograms use
    every image of each set (Fig. 7 is about the whole split), sampled as in
    :func:`gap.similarity_distributions` with the same ``seed`` and ``max_pairs``. ``class_names``:
    the names of all C classes (a legend is drawn for ≤ 12 drawn classes).
    """
    path = _check_path(path)
    _figure_class()  # fail before any work if matplotlib is missing
    sets = _panels(sets, GapSet)
    classes = select_classes(sets[0].labels, num_classes, seed=seed)
    subsets, hists = [], []
    for s in sets:
        v, y, t = subset(s.image, s.labels, s.text, classes, max_per_class=max_per_class, seed=seed)
        subsets.append((v, y, t))
        values = s.values
        if values is None:
            _, values = gap.similarity_distributions(
                s.image, s.labels, s.text, max_pairs=max_pairs, seed=seed, return_values=True
            )
        hists.append(HistogramPanel(s.name, values, s.note))
    coords, axes = project_joint([(v, t) for v, _, t in subsets], method=projection, seed=seed)
    panels = [ProjectionPanel(s.name, c[0], sub[1], c[1], s.note) for s, c, sub in zip(sets, coords, subsets)]
    names = None
    if class_names is not None:
        names = [class_names[int(c)] for c in classes]
    n_classes = len(np.unique(np.asarray(gap._as_tensor(sets[0].labels, "labels").cpu())))
    drawn = f"{len(classes)} of {n_classes} classes" + (f", ≤ {max_per_class} images each" if max_per_class else "")
    what = f"top: {PROJECTION_NAMES[projection.lower()]} projection of {drawn} · bottom: all images of the split"
    full_title = "\n".join(x for x in (title, what) if x)
    return plot_gap(panels, hists, path, title=full_title, class_names=names, axis_labels=axes)
