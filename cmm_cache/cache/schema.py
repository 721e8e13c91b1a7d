"""Schema ``cmm-cache/1``: node names, dtypes and the small helpers every reader and writer shares.

Layout of one file (docs/cache-schema.md)::

    attrs: schema, dataset, backbone, provenance (JSON), default_templates
    classes/names            str   [C]
    classes/wnids            str   [C]   ImageNet family only
    classes/imagenet_index   int64 [C]   shift sets only
    text/<set>/features      f32   [C, d]   attr templates (JSON list)
    text/<set>/per_template  f32   [C, M, d] optional: raw embedding of each of the M templates
    splits/<split>/features  f16   [n, V, d] attr views (JSON list); train may add attr view_recipe (JSON)
    splits/<split>/block_inputs f16 [n, Vb, *shape] optional: input of the image tower's last K blocks
    splits/<split>/labels    int64 [n]
    splits/<split>/index     int64 [n]
    fewshot/shot_<K>-seed_<S>/train, /val   int64 row positions
    blocks                   group, optional: attr cut (JSON: arch, blocks, input_shape, fingerprints, config)
    blocks/suffix/<name>     f32   the weights above the cut (what partial finetuning starts from)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import h5py
import numpy as np

SCHEMA = "cmm-cache/1"
FEATURE_DTYPE = np.float16
TEXT_DTYPE = np.float32
INDEX_DTYPE = np.int64
ROOT_ATTRS = ("schema", "dataset", "backbone", "provenance", "default_templates")

# Checksums (fletcher32) on every dataset so `cache verify` and any read detect
# a flipped byte; fletcher32 requires chunked storage, which h5py then picks.
DSET_KW = dict(fletcher32=True)

DAMAGED_HINT = "Run `cmm-cache cache verify` to see what is wrong, and re-extract it with `cmm-cache extract --force`."


BLOCKS_GROUP = "blocks"
BLOCK_SUFFIX_GROUP = "blocks/suffix"
# Rows of block inputs per HDF5 chunk aim at about this many bytes (one RN50 row is 196 KiB per view).
BLOCK_CHUNK_BYTES = 1 << 20


def block_inputs_node(split: str) -> str:
    return f"splits/{split}/block_inputs"


def block_chunk_rows(row_shape: Sequence[int]) -> int:
    """Rows per HDF5 chunk of a block-inputs dataset whose rows have `row_shape` (float16)."""
    per_row = 2 * int(np.prod([int(v) for v in row_shape]))
    return max(1, BLOCK_CHUNK_BYTES // max(1, per_row))


def text_node(name: str) -> str:
    return f"text/{name}/features"


def per_template_node(name: str) -> str:
    return f"text/{name}/per_template"


def string_array(values: Sequence[str]) -> np.ndarray:
    """Fixed-length UTF-8 strings: unlike variable-length ones they can carry a checksum."""
    encoded = [str(v).encode("utf-8") for v in values]
    width = max([len(b) for b in encoded] + [1])
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width))


def provenance_sha256(provenance_json: str) -> str:
    """The hash a run records to tie itself to the cache it was fitted on."""
    return hashlib.sha256(provenance_json.encode("utf-8")).hexdigest()


# Provenance keys that say when, where and how fast a cache was written, not what it holds: a cache extracted
# again from the same weights, data, preprocessing and code has the same content hash.
VOLATILE_PROVENANCE = ("created", "device", "device_name", "world_size", "batch_size", "num_workers", "workers")


def content_sha256(provenance: dict) -> str:
    """The hash of what a cache *holds*: its provenance without the time and place of extraction
    (:data:`VOLATILE_PROVENANCE`, and the Python version). A run records it; re-extracting the same inputs keeps
    it, so the run stays valid; other weights, data, preprocessing, shots/seeds or code versions change it."""
    p = {k: v for k, v in provenance.items() if k not in VOLATILE_PROVENANCE}
    if isinstance(p.get("versions"), dict):
        p["versions"] = {k: v for k, v in p["versions"].items() if k != "python"}
    blob = json.dumps(p, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def features_content_sha256(provenance: dict) -> str:
    """The content hash of what a method on final features reads from the cache: :func:`content_sha256` as a
    cache extracted without block inputs would have it. Block inputs (``extract --finetune-blocks``) change
    nothing in the features (they are computed through the same cut), so runs fitted on features before the cache
    was re-extracted with them still match it. Caches that record no ``features_request_sha256`` (written
    without block inputs, or before it was recorded) hash as they always did."""
    p = dict(provenance)
    if "features_request_sha256" not in p:
        return content_sha256(p)
    p.pop("blocks", None)
    p["request_sha256"] = p.pop("features_request_sha256")
    return content_sha256(p)


def as_str(value) -> str:
    """An HDF5 string attribute or element as str (h5py hands back bytes for fixed-length strings)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
