"""Stage 1 — datasets as data: manifests, split sources, your own folders and CSVs, few-shot subsets.

- :mod:`.manifests`: the manifest registry (``data_manifests/*.json``, schema ``cmm-manifest/1``);
- :mod:`.names`: a dataset's name, short name and folder key;
- :mod:`.fewshot`: CoOp's few-shot subsets (published index files, or a seeded draw);
- :mod:`.base` (the Dataset), :mod:`.registry` (``load_dataset``), :mod:`.coop`, :mod:`.imagenet`,
  :mod:`.custom` (your own folder / CSV), :mod:`.tiny` (synthetic), :mod:`.download`.

May import: :mod:`cmm_cache.errors`, :mod:`cmm_cache.util`.
"""
