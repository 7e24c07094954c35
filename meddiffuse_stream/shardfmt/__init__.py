"""The shard format in one place: what converters write and loaders read.

- :mod:`.writer` — sample keys and members, USTAR shards with fixed metadata (``ShardWriter``);
- :mod:`.tar` — the reader: members grouped into samples, every length checked, nothing unsafe accepted;
- :mod:`.png` — the lossless PNG codec (8-bit grey/RGB, 16-bit grey);
- :mod:`.manifest` — ``dataset.json``: schema, validation, read and write;
- :mod:`.shardindex` — shard indexes (webdataset's ``wids`` JSON) for shards written by anyone;
- :mod:`.sources` — finding the shards of a folder, prefix, glob, brace pattern, URL list or index;
- :mod:`.parquet` — ``index.parquet``, one row per sample;
- :mod:`.safejson` — JSON from untrusted bytes, with size and depth limits.
"""

from __future__ import annotations

from .manifest import (
    DATASET_JSON,
    FORMAT_VERSION,
    INDEX_PARQUET,
    REJECTS_JSONL,
    Manifest,
    ManifestError,
    ShardInfo,
    parse_manifest,
    read_manifest,
    write_manifest,
)
from .png import decode_png, encode_png
from .shardindex import SHARD_INDEX, ShardIndex, parse_shard_index
from .tar import RawSample, TarProblem, count_samples, iter_samples
from .writer import SHARD_MTIME, EncodedSample, ShardWriter, encode_sample, make_key, shard_name

__all__ = [
    "DATASET_JSON",
    "FORMAT_VERSION",
    "INDEX_PARQUET",
    "REJECTS_JSONL",
    "SHARD_INDEX",
    "SHARD_MTIME",
    "EncodedSample",
    "Manifest",
    "ManifestError",
    "RawSample",
    "ShardIndex",
    "ShardInfo",
    "ShardWriter",
    "TarProblem",
    "count_samples",
    "decode_png",
    "encode_png",
    "encode_sample",
    "iter_samples",
    "make_key",
    "parse_manifest",
    "parse_shard_index",
    "read_manifest",
    "shard_name",
    "write_manifest",
]
