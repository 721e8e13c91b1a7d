"""Analyses of features, caches and fitted runs: the modality-gap measures and pictures, and reports that set
our results beside the published ones.

May import: everything below it except serving (errors, util, datasets, backbones, cache, heads, evaluation,
methods, runs).
"""
