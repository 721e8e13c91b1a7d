"""Stage 9 — using a fitted run on new images: ``predict`` (:mod:`.predict`, ``load_classifier``) and
``export`` (:mod:`.export`, a torch.export program).

Inference code: may import :mod:`cmm_cache.errors`, :mod:`~cmm_cache.util`, :mod:`~cmm_cache.backbones`,
:mod:`cmm_cache.extract.encode` (the same image encoding as the cache), :mod:`~cmm_cache.heads`,
:mod:`~cmm_cache.evaluation` — never training code.
"""
