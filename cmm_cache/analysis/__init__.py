"""analysis/ holds measures and pictures computed from features, caches and fitted runs; it may import
cmm_cache.errors, heads, evaluation, cache, runs (reading) — never training code.

Modules (imported on demand; importing this package loads nothing heavy):

* :mod:`cmm_cache.analysis.gap` — modality-gap measures (L2M, per-class prototype gap, RMG, the
  similarity distributions of CMM's Fig. 7, the three classifier types of Fig. 3, the error flips
  of Fig. 9) as plain functions on tensors, usable on any image/text features.
* :mod:`cmm_cache.analysis.gap_plot` — their pictures (2-D projections, similarity histograms);
  matplotlib (the ``plot`` extra) is imported only when a picture is drawn.
"""

__all__ = ["gap", "gap_plot"]
