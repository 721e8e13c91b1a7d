"""Stage 3 — the HDF5 feature cache, schema ``cmm-cache/1`` (docs/cache-schema.md).

- :mod:`.schema`: node names, dtypes, shared helpers;
- :mod:`.reader`: :func:`~.reader.open_cache` and the read-only :class:`~.reader.Cache` every stage-two command uses;
- :mod:`.writer`: whole-file writes, the streaming end of ``extract`` and ``add_text_nodes``;
- :mod:`.validate`: the schema's rules, checked when a file is opened and by ``cache verify`` (one set);
- :mod:`.partial` and :mod:`.lock`: the work folder that makes ``extract`` resumable, its one-writer lock,
  and the readers' shared lock on a cache file (a writer replacing it waits for them);
- :mod:`.locate`: where a ``(dataset, backbone)`` cache lives, and the one extracted last;
- :mod:`.info` and :mod:`.verify`: ``cache ls``, ``cache info``, ``cache verify``.

May import: :mod:`cmm_cache.errors`, :mod:`cmm_cache.util`, :mod:`cmm_cache.datasets` (names, few-shot groups).
"""
