"""CMM's ablations as named methods: presets of the ``cmm`` method's options.

``cmm-no-map`` (no W, only the prototypes T are learned), ``cmm-no-triplet`` (cross-entropy only)
and ``cmm-logits-only`` (trained and scored on the CMM logits, no fusion with zero-shot). Each is
exactly ``cmm`` with one option changed, so a run's resolved config names the ablation too.

**Which row of the paper's Table 6 each matches.** The paper ablates its components on Logits_CMM alone
— the CMM logits, without the fusion with CLIP's zero-shot logits — so every row of its Table 6 is a
``cmm_only`` run:

* ``cmm-logits-only`` (W and the triplet loss, no fusion) is the Table 6 row with both components;
* the rows without the map or without the triplet loss are ``cmm-logits-only`` with one more option
  changed: ``fit --method cmm-logits-only --set use_map=false`` / ``--set triplet=false`` (equivalently
  ``fit --cmm-only --no-map`` / ``--cmm-only --no-triplet``);
* ``cmm-no-map`` and ``cmm-no-triplet`` keep the fusion with zero-shot, so they match no row of Table 6:
  they ablate the method as it is used (fused), which the paper does not report. Compare them with
  ``cmm``, not with Table 6.
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
# The row of the paper's Table 6 each preset is (see the module docstring).
TABLE6 = {
    "cmm-no-map": "no Table 6 row (fused with zero-shot; Table 6 ablates Logits_CMM alone)",
    "cmm-no-triplet": "no Table 6 row (fused with zero-shot; Table 6 ablates Logits_CMM alone)",
    "cmm-logits-only": "Table 6, Logits_CMM with W and the triplet loss",
}

COSTS = {"cmm-no-map": 2.5, "cmm-no-triplet": 55.0, "cmm-logits-only": 50.0}  # see Method.cost

VARIANTS = {
    name: register_method(
        Method(
            name=name,
            fit=CMM.fit,
            defaults={**CMM.defaults, **preset},
            summary=summary,
            source=f"{CMM.source} (ablation: {TABLE6[name]})",
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
