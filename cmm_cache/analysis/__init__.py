"""Analyses of features, caches and fitted runs: the modality-gap measures and their pictures (:mod:`.gap`,
:mod:`.gap_plot`), the published numbers our results are set beside (:mod:`.published`) and the benchmark
report that sets them there (:mod:`.report`).

The measures are plain functions on tensors, usable on any features, not only cmm-cache runs.

May import: everything below it except serving (errors, util, datasets, backbones, cache, heads, evaluation,
methods, runs).
"""
