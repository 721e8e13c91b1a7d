"""The one rule for "the same backbone": two provenance records describe the same image encoder.

A cache records its encoder's provenance (:meth:`cmm_cache.backbones.load.Backbone.provenance`), and a run
folder keeps its cache's. Scoring a run on another cache (``eval --shift``, ``eval --cache``) and predicting
with a freshly loaded backbone (``predict``, ``export``) both ask this module whether the features would be
the ones the run was fitted on: same model config, weights (by sha256), random-weights seed, feature size and
preprocessing. A local weights file may move, so its path is not compared; its sha256 is.
"""

from __future__ import annotations

import json

# What identifies the encoder features came from (keys of a provenance record).
FINGERPRINT_KEYS = ("model", "pretrained", "weights_sha256", "random_weights_seed", "embed_dim", "preprocessing")


def _plain(v):
    return json.loads(json.dumps(v, default=str))  # tuples -> lists, as the provenance JSON holds them


def is_local_weights(prov: dict) -> bool:
    return bool(prov.get("pretrained")) and prov.get("pretrained") == prov.get("weights_path")


def backbone_differences(a: dict, b: dict) -> dict[str, tuple]:
    """``{key: (a's value, b's value)}`` for every fingerprint key both records hold and that differs.

    Keys only one side records are not compared (records written by older versions lack some).
    """
    diff = {}
    for k in FINGERPRINT_KEYS:
        if k not in a or k not in b:
            continue
        if k == "pretrained" and (is_local_weights(a) or is_local_weights(b)):
            continue  # a weights file may move; its sha256 is what identifies it
        if _plain(a[k]) != _plain(b[k]):
            diff[k] = (_plain(a[k]), _plain(b[k]))
    return diff


def describe_differences(diff: dict[str, tuple], a_name: str, b_name: str) -> str:
    """``"model: run 'RN50' vs cache 'RN101'; ..."`` for a message."""
    return "; ".join(f"{k}: {a_name} {va!r} vs {b_name} {vb!r}" for k, (va, vb) in diff.items())
