"""``cache verify``: read every byte (HDF5 fletcher32 checksums), then check the schema with the same rules
:func:`~cmm_cache.cache.reader.open_cache` applies (:mod:`.validate`), plus non-finite image features.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from cmm_cache.cache.schema import SCHEMA, as_str
from cmm_cache.cache.validate import Scan, run_checks

_BLOCK_BYTES = 64 << 20  # 3-D features are checked in blocks of this size: memory stays flat


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Every problem found in the cache file at `path` (an empty list: it is sound)."""
    path = Path(path)
    if not path.is_file():
        return [f"no file at {path}"]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"not readable as HDF5: {e}"]
    with f:
        scan = Scan(f)
        _check_data(scan)
        if "schema" in f.attrs and as_str(f.attrs["schema"]) != SCHEMA:
            scan.add(f"attribute schema is '{as_str(f.attrs['schema'])}', expected '{SCHEMA}'")
            return scan.problems
        run_checks(scan)
    return list(dict.fromkeys(scan.problems))


def _check_data(scan: Scan) -> None:
    """Every dataset has a checksum and reads back (HDF5 verifies the checksum on read); 3-D datasets
    (features) are read in blocks and checked for non-finite values, smaller ones are kept for the checks."""

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if not obj.fletcher32:
            scan.add(f"{name}: stored without a checksum")
        try:
            if obj.ndim >= 3:  # features and block inputs: read in blocks, keep nothing
                row = obj.dtype.itemsize * int(np.prod(obj.shape[1:]))
                step = max(1, _BLOCK_BYTES // max(1, row))
                for a in range(0, obj.shape[0], step):
                    block = obj[a : a + step]
                    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                        scan.nonfinite.add(name)
            else:
                scan.data[name] = obj[...]
        except OSError as e:
            scan.unreadable.add(name)
            scan.add(f"{name}: damaged data ({e})")

    scan.f.visititems(visit)
