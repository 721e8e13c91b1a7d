"""Stage 5 — what a fitted run *is* at inference: classifier heads and the run-folder reader.

A head maps normalized image features to class scores (:mod:`.base` holds the interface and the registry;
one module per head kind: :mod:`.cmm`, :mod:`.zero_shot`, :mod:`.linear`, :mod:`.tip_adapter`, :mod:`.map`).
:mod:`.run_folder` reads a run folder into a head without the cache.

Inference code: may import :mod:`cmm_cache.errors` and :mod:`cmm_cache.util` only — never training code
(methods, trainers, runs), so ``predict`` and ``export`` carry nothing of the training stage.
"""
