"""Limited-data experiments: a patient-level fraction of a dataset's train split, written as a dataset of its own.

Patients are drawn in a seeded order until the fraction of training samples is reached, so no patient is split
between kept and dropped. The other splits' shards are copied unchanged, so evaluation stays comparable.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, BinaryIO, cast

import numpy as np

from ..shardfmt.manifest import REJECTS_JSONL, Manifest, ShardInfo, read_manifest, split_stats, write_manifest
from ..shardfmt.parquet import read_sample_index, write_sample_index
from ..shardfmt.tar import RawSample, iter_samples
from ..shardfmt.writer import EncodedSample, ShardWriter, shard_name
from ..storage import Location
from ..storage.object_stream import open_object

__all__ = ["subset_dataset"]


def _choose_keys(rows: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    by_patient: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_patient[row["patient_id"] or f"sample:{row['key']}"].append(row["key"])
    patients = sorted(by_patient)
    wanted = max(1, round(fraction * len(rows)))
    chosen: set[str] = set()
    for index in np.random.default_rng(seed).permutation(len(patients)):
        if len(chosen) >= wanted:
            break
        chosen.update(by_patient[patients[index]])
    return chosen


def subset_dataset(
    source: str,
    out: str,
    fraction: float,
    seed: int = 0,
    shard_size: int = 1000,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write ``out`` with ``fraction`` of ``source``'s train split (whole patients); returns its manifest.
    ``storage_options`` reach ``source`` (a remote dataset) and ``out`` alike."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    src, dst = Location(source, storage_options), Location(out, storage_options)
    manifest = read_manifest(src)
    rows = read_sample_index(src)
    keep = _choose_keys([r for r in rows if r["split"] == "train"], fraction, seed)
    by_key = {r["key"]: r for r in rows}
    new_rows: list[dict[str, Any]] = []
    shards: list[ShardInfo] = []
    buffer: list[RawSample] = []
    index = 0

    def flush() -> None:
        nonlocal buffer, index
        if not buffer:
            return
        name = shard_name("train", index)
        stream = io.BytesIO()
        writer = ShardWriter(stream)
        for sample in buffer:
            members = tuple((f"{sample.key}.{suffix}", data) for suffix, data in sample.members.items())
            label = by_key[sample.key].get("label")  # multi-label rows have labels, not a label
            offset = writer.add(EncodedSample(sample.key, members, None if label is None else int(label)))
            new_rows.append({**by_key[sample.key], "shard": name, "offset": offset})
        size, digest = writer.close()
        dst.write_bytes(name, stream.getvalue())
        shards.append(ShardInfo(name, len(buffer), size, digest, "train"))
        buffer, index = [], index + 1

    for shard in manifest.shards:
        if shard.split != "train":
            dst.write_bytes(shard.path, src.read_bytes(shard.path))
            shards.append(shard)
            new_rows.extend(r for r in rows if r["shard"] == shard.path)
            continue
        # a retrying stream whose every GET has the shard's total deadline (a trickling store cannot hold it)
        rng = np.random.default_rng(zlib.crc32(shard.path.encode()))
        with contextlib.closing(open_object(src, shard.path, size=shard.bytes, policy=src.retry, rng=rng)) as stream:
            for item in iter_samples(cast(BinaryIO, stream)):  # read() alone: a shard with its data
                if isinstance(item, RawSample) and item.key in keep:
                    buffer.append(item)
                    if len(buffer) == shard_size:
                        flush()
    flush()
    train_shards = [s for s in shards if s.split == "train"]
    train_stats = split_stats(new_rows, train_shards, manifest.class_names, manifest.task)
    subset = replace(
        manifest,
        shards=tuple(shards),
        split_stats={**manifest.split_stats, **train_stats},
        extra={**manifest.extra, "subset_of": {"source": source, "train_fraction": fraction, "seed": seed}},
    )
    write_sample_index(dst, new_rows)
    dst.write_bytes(REJECTS_JSONL, src.read_bytes(REJECTS_JSONL) if src.exists(REJECTS_JSONL) else b"")
    return write_manifest(dst, subset)
