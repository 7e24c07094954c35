"""Where the loader's CPU goes, per sample, and how fast the decoder alone is on the same bytes.

- :func:`stage_profile`: each stage of a decode worker and of the main process measured on its own over the same
  shards, in CPU time (``time.process_time``: other load on a shared machine does not count), in µs per sample —
  the worker's read (file, sha256, tar parse, the reader's bookkeeping), decode (the decoder alone and what wraps
  it), batch assembly (conversion into the batch buffer included), hand-off (the message and its descriptors)
  and, in the main process, receive, conversion to tensors and pinning (CUDA only).
- :func:`decode_limit`: pyspng alone over the PNG bytes of the same shards in ``processes`` processes, each
  decoding its share from memory: the rate no loader on this machine can pass.
- :func:`loader_cpu`: a real run's CPU split — worker processes and main process, µs per delivered sample.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
from multiprocessing import reduction
from pathlib import Path
from typing import Any

import numpy as np
import pyspng

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["decode_limit", "image_bytes", "loader_cpu", "stage_profile"]


def _shards(root: str) -> tuple[Any, list[bytes]]:
    from meddiffuse_stream.nodes.source import open_dataset

    dataset = open_dataset(root, "train")
    return dataset, [(Path(root) / shard.path).read_bytes() for shard in dataset.shards]


def image_bytes(root: str) -> list[bytes]:
    """The PNG member of every sample of the ``train`` split, in shard order."""
    from meddiffuse_stream.nodes.tar import RawSample, iter_samples

    _, shards = _shards(root)
    return [item.members["png"] for data in shards for item in iter_samples(io.BytesIO(data))
            if isinstance(item, RawSample)]  # fmt: skip


def _cpu(work: Any) -> tuple[float, Any]:
    started = time.process_time()
    result = work()
    return time.process_time() - started, result


def _plan(dataset: Any, batch_size: int) -> Any:
    from meddiffuse_stream.nodes.epochs import EpochSource

    epochs = EpochSource(tuple(s.samples for s in dataset.shards), batch_size, seed=0, rank=0, world_size=1,
                         num_workers=1, shuffle=False, drop_last=False, buffer_size=1000, even=True)  # fmt: skip
    return epochs.plan_for(0)


def stage_profile(root: str, batch_size: int = 64, dtype: str = "float32", repeats: int = 3) -> dict[str, Any]:
    """µs of CPU per sample for each stage (the least of ``repeats`` passes), decoded the default chain's way."""
    from meddiffuse_stream.nodes.chain import WorkerChain
    from meddiffuse_stream.nodes.decode import DecodeOptions, decode_sample
    from meddiffuse_stream.nodes.pixels import write_image
    from meddiffuse_stream.nodes.read import ReadSamples
    from meddiffuse_stream.nodes.tar import RawSample, iter_samples

    dataset, shards = _shards(root)
    plan = _plan(dataset, batch_size)
    options = DecodeOptions(num_classes=len(dataset.class_names) or None)
    count = dataset.total
    raws = [item for data in shards for item in iter_samples(io.BytesIO(data)) if isinstance(item, RawSample)]
    pngs = [raw.members["png"] for raw in raws]
    decoded = [decode_sample(raw, options)["image"] for raw in raws]
    out = np.empty((batch_size, *decoded[0].shape), np.dtype(dtype))

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
            "worker.read.tar_parse": _cpu(lambda: [list(iter_samples(io.BytesIO(data))) for data in shards])[0],
            "worker.read.total": _cpu(read_node)[0],
            "worker.decode.decoder": _cpu(lambda: [pyspng.load(png) for png in pngs])[0],
            "worker.decode.total": _cpu(lambda: [decode_sample(raw, options) for raw in raws])[0],
            "worker.batch.convert": _cpu(lambda: [write_image(out[i % batch_size], im, i)
                                                  for i, im in enumerate(decoded)])[0],
        }
        seconds, spans = _cpu(chain)
        measured["worker.chain.total"] = seconds - sum(spans.values())
        measured.update(spans)
        for name, seconds in measured.items():
            timings.setdefault(name, []).append(seconds)
    best = {name: min(values) * 1e6 / count for name, values in timings.items()}
    best["worker.read.bookkeeping"] = best["worker.read.total"] - best["worker.read.sha256"] - \
        best["worker.read.tar_parse"] - best["worker.read.file"]  # fmt: skip
    best["worker.decode.wrapper"] = best["worker.decode.total"] - best["worker.decode.decoder"]
    best["worker.batch.assemble"] = best["worker.chain.total"] - best["worker.read.total"] - best["worker.decode.total"]
    return {"samples": count, "png_bytes": int(np.mean([len(p) for p in pngs])), "shape": list(decoded[0].shape),
            "stored_dtype": str(decoded[0].dtype), "dtype": dtype,
            "us_per_sample": {name: round(value, 2) for name, value in sorted(best.items())}}  # fmt: skip


class _Handoff:
    """A worker's segment pool and a loader's maps over a real socket pair, in this process: each chunk is sent,
    received, converted to tensors (and pinned, with CUDA), dropped, and its segment goes back to the pool."""

    def __init__(self, dtype: str) -> None:
        from meddiffuse_stream.nodes.segments import SegmentMaps, SegmentPool

        self.dtype = dtype
        self.pool, self.maps = SegmentPool(keep=4), SegmentMaps()
        self.left, self.right = socket.socketpair()
        self.spans: dict[str, float] = {}

    def __call__(self, chunk: dict[str, Any]) -> None:
        import torch

        from meddiffuse_stream.nodes.to_torch import convert_chunk
        from meddiffuse_stream.nodes.wire import pack, unpack

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


def _decode_share(pngs: list[bytes], epochs: int, start: Any, results: Any) -> None:
    start.wait()
    cpu = time.process_time()
    for _ in range(epochs):
        for png in pngs:
            pyspng.load(png)
    results.put(time.process_time() - cpu)


def decode_limit(pngs: list[bytes], processes: int, epochs: int = 2) -> dict[str, float]:
    """Samples/s of pyspng alone over ``pngs`` (each of ``processes`` forked processes decodes its share from
    memory ``epochs`` times), and its CPU per decode."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_decode_share, args=(pngs[i::processes], epochs, start, results))
               for i in range(processes)]  # fmt: skip
    for worker in workers:
        worker.start()
    time.sleep(0.2)  # every process forked and waiting
    started = time.perf_counter()
    start.set()
    cpu = sum(results.get(timeout=3600) for _ in workers)
    wall = time.perf_counter() - started
    for worker in workers:
        worker.join()
    decodes = len(pngs) * epochs
    return {"samples_per_s": round(decodes / wall, 1), "us_cpu_per_decode": round(cpu * 1e6 / decodes, 2)}


_RUN = """
import json, os, resource, sys, time
from meddiffuse_stream import MedDiffuseLoader
S = json.loads(sys.argv[1])
TICK = os.sysconf("SC_CLK_TCK")

def workers_cpu(pids):
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK

def main_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

loader = MedDiffuseLoader(S["source"], S["batch"], num_workers=S["workers"], shuffle=False, dtype=S["dtype"])
for images, labels in loader:  # warm-up: workers started, caches and segments made
    pass
pids = loader.graph.workers.pool.pids
count, started, main, workers = 0, time.perf_counter(), main_cpu(), workers_cpu(pids)
for _ in range(S["epochs"]):
    for images, labels in loader:
        count += len(labels)
wall = time.perf_counter() - started
main, workers = main_cpu() - main, workers_cpu(pids) - workers
loader.close()
print(json.dumps({"samples": count, "seconds": wall, "main": main, "workers": workers}))
"""


def loader_cpu(source: str, batch: int, workers: int, epochs: int, dtype: str = "float32") -> dict[str, float]:
    """A run in a fresh process, after a warm-up epoch: its rate and CPU per delivered sample (µs) in the main
    process and in the worker processes (steady state: the next epoch's read-ahead at the end of the measured
    epochs matches the one at their start)."""
    settings = json.dumps({"source": source, "batch": batch, "workers": workers, "epochs": epochs, "dtype": dtype})
    result = subprocess.run([sys.executable, "-c", _RUN, settings], capture_output=True, text=True, cwd=ROOT,
                            timeout=3600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"loader run failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    samples = figures["samples"]
    return {"samples_per_s": round(samples / figures["seconds"], 1),
            "us_cpu_per_sample_main": round(figures["main"] * 1e6 / samples, 2),
            "us_cpu_per_sample_workers": round(figures["workers"] * 1e6 / samples, 2)}  # fmt: skip


if __name__ == "__main__":  # python tools/loader_profile.py SHARD_DIR [dtype]
    source = sys.argv[1]
    chosen = sys.argv[2] if len(sys.argv) > 2 else "float32"
    print(json.dumps(stage_profile(source, dtype=chosen), indent=1))
    print(json.dumps(decode_limit(image_bytes(source), 2), indent=1))
    print(json.dumps(loader_cpu(source, 64, 2, 2, chosen), indent=1))
    print("max rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
