"""The gap pictures: projections checked against numpy, files checked as files, missing extras as errors."""

import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cmm_cache.analysis import gap, gap_plot
from cmm_cache.errors import CmmError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cones(C=5, per=12, d=24, seed=0):
    """CLIP-like geometry: each modality in its own cone (a shared offset per modality), classes inside."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(C, d)))
    cone_i, cone_t = unit(rng.normal(size=d)), unit(rng.normal(size=d))
    y = np.repeat(np.arange(C), per)
    v = 0.5 * centres[y] + cone_i + 0.1 * rng.normal(size=(len(y), d))
    t = 0.5 * centres + cone_t
    return v, y, t


def two_sets():
    v, y, t = cones()
    after = unit(v) - 0.8 * (unit(v).mean(0) - unit(t).mean(0))  # a stand-in for mapped features
    return [gap_plot.GapSet("before", v, y, t, "L2M …"), gap_plot.GapSet("after", after, y, t)]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def parse_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return path.read_text()


def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name] == []


# ----------------------------------------------------------------------------
# Projection


def test_pca_is_the_joint_principal_plane_of_the_normalized_points():
    v, y, t = cones()
    ((img, txt),), axes = gap_plot.project_joint([(v, t)])
    X = np.concatenate([unit(v), unit(t)])
    Xc = X - X.mean(0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ Vt[:2].T
    got = np.concatenate([img, txt])
    for k in range(2):  # an eigenvector's sign is arbitrary: compare up to sign
        sign = np.sign(got[:, k] @ ref[:, k])
        np.testing.assert_allclose(sign * got[:, k], ref[:, k], atol=1e-9)
    share = S[:2] ** 2 / (S**2).sum() * 100
    assert axes == (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")
    again, _ = gap_plot.project_joint([(v, t)])
    np.testing.assert_array_equal(again[0][0], img)  # deterministic signs, same picture every time


def test_pca_keeps_the_offset_between_the_modalities():
    v, y, t = cones()
    img, txt = gap_plot.project_2d(v, t)
    # class-balanced image centre vs text centre, in the picture and in feature space (L2M)
    pic = np.linalg.norm(np.stack([img[y == c].mean(0) for c in range(len(t))]).mean(0) - txt.mean(0))
    l2m = gap.l2m(v, y, t)
    assert l2m > 0.5 and pic <= l2m + 1e-9  # a projection never lengthens a distance ...
    assert pic > 0.95 * l2m  # ... and PCA keeps nearly all of this one: the gap is the main direction


def test_joint_projection_puts_every_set_in_one_basis():
    v, y, t = cones()
    (a, b), _ = gap_plot.project_joint([(v, t), (v * 3.0, t)])  # same directions: same points
    np.testing.assert_allclose(a[0], b[0], atol=1e-12)
    np.testing.assert_allclose(a[1], b[1], atol=1e-12)


def test_tsne_projection_is_seeded():
    pytest.importorskip("sklearn", reason="t-SNE needs scikit-learn (optional; pip install scikit-learn)")
    v, y, t = cones(C=3, per=10, d=8)
    a = gap_plot.project_2d(v, t, method="tsne", seed=3)
    b = gap_plot.project_2d(v, t, method="tsne", seed=3)
    assert a[0].shape == (30, 2) and a[1].shape == (3, 2)
    np.testing.assert_array_equal(a[0], b[0])


def test_missing_scikit_learn_is_a_clear_error_for_tsne(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    v, y, t = cones(C=3, per=4, d=6)
    with pytest.raises(CmmError, match="scikit-learn") as e:
        gap_plot.project_2d(v, t, method="tsne")
    assert "pip install 'cmm-cache[plot]'" in str(e.value)


def test_missing_umap_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    v, y, t = cones(C=3, per=4, d=6)
    with pytest.raises(CmmError, match="umap-learn"):
        gap_plot.project_2d(v, t, method="umap")


def test_unknown_projection_is_a_clear_error():
    v, y, t = cones(C=3, per=4, d=6)
    with pytest.raises(CmmError, match="pca, tsne, umap"):
        gap_plot.project_2d(v, t, method="mds")


def test_select_classes_and_subset():
    v, y, t = cones(C=6, per=5)
    chosen = gap_plot.select_classes(y, 3, seed=1)
    assert len(chosen) == 3 and list(chosen) == sorted(chosen) and set(chosen) <= set(range(6))
    np.testing.assert_array_equal(chosen, gap_plot.select_classes(y, 3, seed=1))
    np.testing.assert_array_equal(gap_plot.select_classes(y, None), np.arange(6))
    vs, ys, ts = gap_plot.subset(v, y, t, [4, 1], max_per_class=2, seed=0)
    assert vs.shape == (4, v.shape[1]) and sorted(ys.tolist()) == [0, 0, 1, 1]
    np.testing.assert_allclose(ts.numpy(), t[[4, 1]])
    for row, label in zip(vs.numpy(), ys):  # every kept image belongs to the class its new label names
        src = np.flatnonzero((v == row).all(1))[0]
        assert y[src] == [4, 1][label]
    with pytest.raises(CmmError, match="classes must be ids"):
        gap_plot.subset(v, y, t, [9])


# ----------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_draw_gap_writes_a_complete_picture(tmp_path, suffix):
    path = tmp_path / "pics" / f"gap{suffix}"
    title = gap_plot.figure_title(dataset="dtd", backbone="rn50", method="cmm", shots=16, seed=1, split="test")
    names = [f"class{c}" for c in range(5)]
    out = gap_plot.draw_gap(two_sets(), path, num_classes=3, title=title, class_names=names, max_pairs=500)
    assert out == path and no_temp_files(path.parent)
    if suffix == ".png":
        assert_png(path)
    else:
        svg = parse_svg(path)
        for text in ("dtd · rn50 · cmm · 16 shots · seed 1 · test split", "dot = image", "triangle = text prototype",
                     "matched image–text", "mismatched image–text", "image–image (different classes)",
                     "PCA projection of 3 of 5 classes", "before", "after"):  # fmt: skip
            assert text in svg, text
        assert sum(f">class{c}<" in svg for c in range(5)) == 3  # the legend names the 3 drawn classes


def test_plot_projection_and_histograms_alone(tmp_path):
    v, y, t = cones()
    ((img, txt),), axes = gap_plot.project_joint([(v, t)])
    gap_plot.plot_projection([("before", img, y, txt)], tmp_path / "p.png", title="t", axis_labels=axes)
    assert_png(tmp_path / "p.png")
    _, values = gap.similarity_distributions(v, y, t, return_values=True)
    gap_plot.plot_similarity_histograms([("before", values), ("again", values, "note")], tmp_path / "h.svg")
    assert "mismatched image–text" in parse_svg(tmp_path / "h.svg")
    assert no_temp_files(tmp_path)


def test_a_failed_write_keeps_the_previous_picture(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "gap.png"
    panels = [("before", {k: np.linspace(-0.2, 0.5, 50) for k in gap.DISTRIBUTIONS})]
    gap_plot.plot_similarity_histograms(panels, path)
    before = path.read_bytes()

    def broken_savefig(self, fname, **kw):
        open(fname, "wb").write(PNG_SIGNATURE + b"half")  # a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        gap_plot.plot_similarity_histograms(panels, path)
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_an_unknown_suffix_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # checked before matplotlib is needed
    for fn, args in (
        (gap_plot.draw_gap, (two_sets(),)),
        (gap_plot.plot_projection, ([("a", np.zeros((1, 2)), [0], np.zeros((1, 2)))],)),
    ):
        with pytest.raises(CmmError, match=r"\.png or \.svg"):
            fn(*args, tmp_path / "gap.pdf")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(CmmError, match="matplotlib") as e:
        gap_plot.draw_gap(two_sets(), tmp_path / "gap.png")
    assert "pip install 'cmm-cache[plot]'" in str(e.value)
    with pytest.raises(CmmError, match="matplotlib"):
        gap_plot.plot_similarity_histograms([("a", {k: [0.1] for k in gap.DISTRIBUTIONS})], tmp_path / "h.png")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------
# Panels and titles


def test_bad_panels_are_clear_errors(tmp_path):
    img, txt = np.zeros((3, 2)), np.zeros((2, 2))
    with pytest.raises(CmmError, match=r"\[rows, 2\]"):
        gap_plot.ProjectionPanel("a", np.zeros((3, 3)), [0, 1, 1], txt)
    with pytest.raises(CmmError, match="index its 2 prototypes"):
        gap_plot.ProjectionPanel("a", img, [0, 1, 2], txt)
    with pytest.raises(CmmError, match="integers"):
        gap_plot.ProjectionPanel("a", img, [0.0, 1.0, 1.0], txt)
    with pytest.raises(CmmError, match="non-finite"):
        gap_plot.ProjectionPanel("a", np.full((3, 2), np.nan), [0, 1, 1], txt)
    with pytest.raises(CmmError, match="lacks image_image"):
        gap_plot.HistogramPanel("a", {"matched": [1.0], "mismatched": [0.0]})
    with pytest.raises(CmmError, match="different numbers of classes"):
        gap_plot.plot_projection([("a", img, [0, 1, 1], txt), ("b", img, [0, 0, 0], txt[:1])], tmp_path / "p.png")
    values = {k: [0.1, 0.2] for k in gap.DISTRIBUTIONS}
    with pytest.raises(CmmError, match="one of each per set"):
        gap_plot.plot_gap([("a", img, [0, 1, 1], txt)], [("a", values), ("b", values)], tmp_path / "g.png")
    with pytest.raises(CmmError, match="Nothing to draw"):
        gap_plot.plot_projection([], tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


def test_titles_name_what_is_drawn():
    assert gap_plot.figure_title(dataset="dtd", backbone="rn50", method="cmm", shots=1) == "dtd · rn50 · cmm · 1 shot"
    m = gap.gap_measures(*cones())
    note = gap_plot.measure_note(m)
    assert f"L2M {m['l2m']:.3f}" in note and f"RMG {m['rmg']:.3f}" in note and "prototype gap" in note
