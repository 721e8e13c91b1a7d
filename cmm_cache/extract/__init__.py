"""Stage 4 — ``extract``: encode a dataset once with a backbone and write its cache.

- :mod:`.pipeline`: :func:`~.pipeline.extract` (resolve, run, finish; resumable, lock-protected);
- :mod:`.plan`: what an extraction will write, decided before any image is read;
- :mod:`.encode`: images through decoding workers and the image tower; text per template set;
- :mod:`.shard`: this process's share of the chunks; :mod:`.distributed`: torchrun;
- :mod:`.add_text`: ``extract --add-text`` for caches that lack per-template text.

May import: :mod:`cmm_cache.errors`, :mod:`~cmm_cache.util`, :mod:`~cmm_cache.datasets`,
:mod:`~cmm_cache.backbones`, :mod:`~cmm_cache.cache`.
"""
