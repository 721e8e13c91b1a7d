"""CMM's ablations as named methods: presets of the ``cmm`` method's options (paper Table 6).

``cmm-no-map`` (no W, only the prototypes T are learned), ``cmm-no-triplet`` (cross-entropy only)
and ``cmm-logits-only`` (trained and scored on the CMM logits, no fusion with zero-shot). Each is
exactly ``cmm`` with one option changed, so a run's resolved config names the ablation too.
"""

from __future__ import annotations

from cmm_cache.methods.base import Method
from cmm_cache.methods.cmm import METHOD as CMM
from cmm_cache.methods.registry import register_method

PRESETS = {
    "cmm-no-map": ({"use_map": False}, "CMM without the map W (only the prototypes T are trained)"),
    "cmm-no-triplet": ({"triplet": False}, "CMM without the triplet loss"),
    "cmm-logits-only": ({"cmm_only": True}, "CMM trained and scored on its own logits (no zero-shot fusion)"),
}

COSTS = {"cmm-no-map": 2.5, "cmm-no-triplet": 55.0, "cmm-logits-only": 50.0}  # see Method.cost

VARIANTS = {
    name: register_method(
        Method(
            name=name,
            fit=CMM.fit,
            defaults={**CMM.defaults, **preset},
            summary=summary,
            source=CMM.source + " (ablation, Table 6)",
            trained=True,
            runtime_options=CMM.runtime_options,
            budget=CMM.budget,
            rank=CMM.rank + 1 + i,
            selection=CMM.selection if not preset.get("cmm_only") else "none (no fusion weight)",
            cost=COSTS[name],
            precheck=CMM.precheck,
        )
    )
    for i, (name, (preset, summary)) in enumerate(PRESETS.items())
}
