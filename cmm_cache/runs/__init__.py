"""Stage 8 — runs: fitting on a cache and keeping what was fitted.

- :mod:`.identity`: what makes a run itself (resolved config, config key);
- :mod:`.store`: where a run folder goes and writing it (reading is :mod:`cmm_cache.heads.run_folder`);
- :mod:`.discovery`: finding run folders on disk;
- :mod:`.protocol`: one run, or the whole protocol (every K × seed) on one cache;
- :mod:`.compare`: methods × shots × seeds on one cache, its table and plot;
- :mod:`.benchmark`: datasets × backbones × methods × shots × seeds as a job list: checks, shards, runner;
- :mod:`.results`: many result.json files summarized (``results merge``).

May import: everything below it (errors, util, datasets, backbones, cache, heads, evaluation, methods).
"""
