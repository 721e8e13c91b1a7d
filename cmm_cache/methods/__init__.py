"""Stage 7 — few-shot methods: one file per method, found by the registry; their shared trainers.

- :mod:`.base`: the method contract (:class:`~.base.FitData` in, :class:`~.base.MethodResult` out);
- :mod:`.registry`: discovery (every module here that declares a method), ``get_method``;
- :mod:`.search`: the one validation-search rule (grid order, ties, start value) every method uses;
- one module per method (``zero_shot``, ``linear_probe``, ``wise_ft``, ``cross_modal``, ``tip_adapter``, ``gda``,
  ``prolip``, ``cmm``, ``cmm_variants``);
- ``trainers/``: training machinery shared by methods (the CMM trainer with its torch loop, thread chooser and
  compiled CPU kernel; Lin et al.'s batched linear heads; guarded optimizer ops).

May import: everything below it (errors, util, datasets, backbones, cache, heads, evaluation).
"""
