"""Where the loader's CPU goes, per sample: each stage of a decode worker and of the main process measured on its
own over the same shards, in CPU time (``time.process_time``: other load on a shared machine does not count).

The worker's read (file, sha256, the first tar parse of a shard and the samples built from its kept layout in
every later epoch, the reader's bookkeeping), decode as the default chain decodes (the decoder alone and what wraps
it), batch assembly (the conversion into the batch buffer included) and hand-off (the message and its descriptors,
reusing a released segment); in the main process receive, conversion to tensors and pinning (CUDA only). The
whole chain is measured too, in its steady state (shards hashed and parsed in an earlier pass); ``assemble`` and
``bookkeeping`` are what is left of a total after its parts.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import socket
import sys
import time
from multiprocessing import reduction
from pathlib import Path
from typing import Any

import numpy as np
import pyspng

__all__ = ["image_bytes", "stage_profile"]


def _shards(root: str) -> tuple[Any, list[bytes]]:
    from meddiffuse_stream.nodes.source import open_dataset

    dataset = open_dataset(root, "train")
    return dataset, [(Path(root) / shard.path).read_bytes() for shard in dataset.shards]


def image_bytes(root: str) -> list[bytes]:
    """The PNG member of every sample of the ``train`` split, in shard order."""
    from meddiffuse_stream.shardfmt.tar import RawSample, iter_samples

    _, shards = _shards(root)
    return [
        item.members["png"] for data in shards for item in iter_samples(io.BytesIO(data)) if isinstance(item, RawSample)
    ]


def _cpu(work: Any) -> tuple[float, Any]:
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def _plan(dataset: Any, batch_size: int) -> Any:
    from meddiffuse_stream.nodes.epochs import EpochSource

    epochs = EpochSource(
        tuple(s.samples for s in dataset.shards),
        batch_size,
        seed=0,
        rank=0,
        world_size=1,
        num_workers=1,
        shuffle=False,
        drop_last=False,
        buffer_size=1000,
        even=True,
    )
    return epochs.plan_for(0)


def stage_profile(root: str, batch_size: int = 64, dtype: str = "float32", repeats: int = 3) -> dict[str, Any]:
    """µs of CPU per sample for each stage (the least of ``repeats`` passes), decoded the default chain's way."""
    from meddiffuse_stream.nodes.chain import WorkerChain
    from meddiffuse_stream.nodes.decode import DecodeOptions, decode_plain_png, decode_sample
    from meddiffuse_stream.nodes.pixels import write_image
    from meddiffuse_stream.nodes.read import ReadSamples
    from meddiffuse_stream.nodes.reading.layouts import plain_samples
    from meddiffuse_stream.shardfmt.tar import MAX_MEMBER_BYTES, RawSample, iter_samples
    from meddiffuse_stream.shardfmt.tar_fast import parse_plain

    def parse(data: bytes) -> list[Any]:  # as the reader parses a shard in memory the first time
        return parse_plain(data, MAX_MEMBER_BYTES) or list(iter_samples(io.BytesIO(data)))

    def reuse_layouts() -> list[Any]:  # as the fused chain serves a shard it parsed before (every later epoch)
        return [plain_samples(data, MAX_MEMBER_BYTES, sha, rows=True) for data, sha in zip(shards, hashes, strict=True)]

    def decode(raw: RawSample) -> Any:  # as the default chain decodes: plain PNGs straight, the rest in full
        image = decode_plain_png(raw.members["png"], options.max_pixels)
        return image if image is not None else decode_sample(raw, options)["image"]

    dataset, shards = _shards(root)
    hashes = [hashlib.sha256(data).hexdigest() for data in shards]
    plan = _plan(dataset, batch_size)
    options = DecodeOptions(num_classes=len(dataset.class_names) or None)
    count = dataset.total
    raws = [item for data in shards for item in iter_samples(io.BytesIO(data)) if isinstance(item, RawSample)]
    pngs = [raw.members["png"] for raw in raws]
    first = decode_sample(raws[0], options)["image"]
    out = np.empty((batch_size, *first.shape), np.dtype(dtype))

    def convert() -> float:
        """Each image converted into its batch slot right after its decode, as the chain does (cache-hot)."""
        seconds = 0.0
        for index, raw in enumerate(raws):
            image = decode_sample(raw, options)["image"]
            started = time.process_time()
            write_image(out[index % batch_size], image, index)
            seconds += time.process_time() - started
        return seconds

    def read_node() -> None:
        node = ReadSamples(dataset, plan, 0)
        node.reset(None)
        for _ in range(count):
            next(node)

    def chain() -> dict[str, float]:
        handoff = _Handoff(dtype)
        node = WorkerChain(dataset, options, dtype=dtype).build(plan, 0, 0, allocate=handoff.pool.empty)
        node.reset(None)
        for chunk in node:  # handed over and released at once, as a loader keeping up would
            handoff(chunk)
        handoff.close()
        return handoff.spans

    timings: dict[str, list[float]] = {}
    for _ in range(repeats):
        measured = {
            "worker.read.file": _cpu(lambda: [(Path(root) / s.path).read_bytes() for s in dataset.shards])[0],
            "worker.read.sha256": _cpu(lambda: [hashlib.sha256(data).digest() for data in shards])[0],
            "worker.read.tar_parse": _cpu(lambda: [parse(data) for data in shards])[0],
            "worker.read.total": _cpu(read_node)[0],
            "worker.decode.decoder": _cpu(lambda: [pyspng.load(png) for png in pngs])[0],
            "worker.read.tar_layout_reused": _cpu(reuse_layouts)[0],
            "worker.decode.total": _cpu(lambda: [decode(raw) for raw in raws])[0],
            "worker.batch.convert": convert(),
        }
        seconds, spans = _cpu(chain)
        measured["worker.chain.total"] = seconds - sum(spans.values())
        measured.update(spans)
        for name, seconds in measured.items():
            timings.setdefault(name, []).append(seconds)
    best = {name: min(values) * 1e6 / count for name, values in timings.items()}
    parts = {  # what is left of a total after its parts (at least 0: parts measured alone can cost more)
        "worker.read.bookkeeping": ("worker.read.total", "worker.read.file", "worker.read.tar_layout_reused"),
        "worker.decode.wrapper": ("worker.decode.total", "worker.decode.decoder"),
        "worker.batch.assemble": ("worker.chain.total", "worker.read.total", "worker.decode.total"),
    }
    for name, (total, *rest) in parts.items():
        best[name] = max(0.0, best[total] - sum(best[part] for part in rest))
    return {
        "samples": count,
        "png_bytes": int(np.mean([len(p) for p in pngs])),
        "shape": list(first.shape),
        "stored_dtype": str(first.dtype),
        "dtype": dtype,
        "us_per_sample": {name: round(value, 2) for name, value in sorted(best.items())},
    }


class _Handoff:
    """A worker's segment pool and a loader's maps over a real socket pair, in this process: each chunk is sent,
    received, converted to tensors (and pinned, with CUDA), dropped, and its segment goes back to the pool."""

    def __init__(self, dtype: str) -> None:
        from meddiffuse_stream.nodes.transport.segments import SegmentMaps, SegmentPool

        self.dtype = dtype
        self.pool, self.maps = SegmentPool(keep=4), SegmentMaps()
        self.left, self.right = socket.socketpair()
        self.spans: dict[str, float] = {}

    def __call__(self, chunk: dict[str, Any]) -> None:
        import torch

        from meddiffuse_stream.nodes.to_torch import convert_chunk
        from meddiffuse_stream.nodes.transport.wire import pack, unpack

        marks = [time.process_time()]
        message, segments = pack(chunk, self.pool)
        self.left.sendall(len(message).to_bytes(8, "big") + message)
        if segments:
            reduction.sendfds(self.left, [s.descriptor.fd for s in segments])
        for segment in segments:
            segment.descriptor.close()
        marks.append(time.process_time())
        size = int.from_bytes(_exactly(self.right, 8), "big")
        received = unpack(_exactly(self.right, size), self.maps, lambda n: reduction.recvfds(self.right, n))
        marks.append(time.process_time())
        batch = convert_chunk(received, self.dtype)
        marks.append(time.process_time())
        names = ["worker.handoff.send", "main.receive", "main.to_torch"]
        if torch.cuda.is_available():
            batch["image"].pin_memory()
            marks.append(time.process_time())
            names.append("main.pin")
        del batch, received, chunk
        marks.append(time.process_time())
        self.pool.release(self.maps.take_releases())
        marks.append(time.process_time())
        names.append("worker.handoff.reuse")
        spans = [b - a for a, b in itertools.pairwise(marks)]
        del spans[-2]  # dropping the batch is the caller's
        for name, seconds in zip(names, spans, strict=True):
            self.spans[name] = self.spans.get(name, 0.0) + seconds

    def close(self) -> None:
        self.left.close()
        self.right.close()


def _exactly(connection: socket.socket, size: int) -> bytes:
    parts, have = [], 0
    while have < size:
        part = connection.recv(min(size - have, 1 << 20))
        if not part:
            raise EOFError("socket closed")
        parts.append(part)
        have += len(part)
    return b"".join(parts)


if __name__ == "__main__":  # python tools/loader_profile.py SHARD_DIR [dtype]
    print(json.dumps(stage_profile(sys.argv[1], dtype=sys.argv[2] if len(sys.argv) > 2 else "float32"), indent=1))
