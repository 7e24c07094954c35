"""The decode limit of a machine and a loader's rate and CPU split against it, on the same shards.

- :func:`decode_limit`: pyspng alone over the PNG bytes of the shards in ``processes`` processes, each decoding
  its share from memory: the rate no loader on this machine can pass.
- :func:`loader_run`: ``MedDiffuseLoader`` over the shards in a fresh process, after a warm-up epoch: its rate and
  the CPU per delivered sample of its main process and of its worker processes.
- :func:`against_limit`: both, alternating for ``rounds``, with the medians and their ratios: of rates
  (``ratio_vs_decode_limit``, the goal's: the median over rounds of each run's rate over the limit measured just
  before it; ``ratio_of_medians`` beside it) and of CPU per sample (``cpu_ratio_vs_decoder``: the decoder's CPU per
  decode over the loader's per sample, workers and main process together — what share of the loader's CPU is
  decoding; steadier than rates on a machine shared with other work).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyspng

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["against_limit", "decode_limit", "loader_run"]


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
    workers = [
        context.Process(target=_decode_share, args=(pngs[i::processes], epochs, start, results))
        for i in range(processes)
    ]
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


def loader_run(source: str, batch: int, workers: int, epochs: int, dtype: str = "float32") -> dict[str, float]:
    """A run in a fresh process, after a warm-up epoch: its rate and CPU per delivered sample (µs) in the main
    process and in the worker processes (steady state: the next epoch's read-ahead at the end of the measured
    epochs matches the one at their start)."""
    settings = json.dumps({"source": source, "batch": batch, "workers": workers, "epochs": epochs, "dtype": dtype})
    result = subprocess.run(
        [sys.executable, "-c", _RUN, settings],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"loader run failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    samples = figures["samples"]
    return {
        "samples_per_s": round(samples / figures["seconds"], 1),
        "us_cpu_per_sample_main": round(figures["main"] * 1e6 / samples, 2),
        "us_cpu_per_sample_workers": round(figures["workers"] * 1e6 / samples, 2),
    }


def against_limit(
    source: str,
    pngs: list[bytes],
    *,
    batch: int,
    workers: int,
    epochs: int,
    rounds: int,
    dtypes: tuple[str, ...] = ("float32", "uint8"),
) -> dict[str, Any]:
    """The decode limit and the loader in each of ``dtypes``, alternating for ``rounds``; medians and ratios."""
    limits: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, float]]] = {dtype: [] for dtype in dtypes}
    for _ in range(rounds):
        limits.append(decode_limit(pngs, workers, epochs))
        for dtype in dtypes:
            runs[dtype].append(loader_run(source, batch, workers, epochs, dtype))
    limit = statistics.median(r["samples_per_s"] for r in limits)
    result: dict[str, Any] = {
        "decode_limit": {
            "samples_per_s": round(limit, 1),
            "processes": workers,
            "us_cpu_per_decode": statistics.median(r["us_cpu_per_decode"] for r in limits),
        },
    }
    decode_cpu = result["decode_limit"]["us_cpu_per_decode"]
    for dtype, values in runs.items():
        median = {key: round(statistics.median(v[key] for v in values), 2) for key in values[0]}
        spent = median["us_cpu_per_sample_workers"] + median["us_cpu_per_sample_main"]
        # each run against the limit measured just before it: this machine's speed drifts by 10 % and more
        # between minutes, which a ratio of two medians taken across rounds would carry into the goal's figure
        paired = [run["samples_per_s"] / at["samples_per_s"] for run, at in zip(values, limits, strict=True)]
        result[f"loader_{dtype}"] = {
            **median,
            "ratio_vs_decode_limit": round(statistics.median(paired), 3),
            "ratio_per_round": [round(r, 3) for r in paired],
            "ratio_of_medians": round(median["samples_per_s"] / limit, 3),
            "cpu_ratio_vs_decoder": round(decode_cpu / spent, 3),
        }
    return result
