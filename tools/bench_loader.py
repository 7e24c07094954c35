#!/usr/bin/env python3
"""Benchmark of MedDiffuseLoader against stock webdataset and litdata on the same PNG bytes.

Each run is a fresh subprocess (peak memory: the sampled RSS of it and its workers) reading the same 64x64 grey
images into float32 (B, 1, 64, 64) batches with the
same worker count and batch size; runs alternate (webdataset, litdata, meddiffuse, ...) so machine drift hits all
alike, and the median is reported. Also: the same loader from SeaweedFS S3 against local disk (the server on a core
of its own, then sharing the loader's cores), and memory growth over 10 epochs. Writes ``.bench/loader.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import descendants, rss_of_tree

ROOT = Path(__file__).resolve().parents[1]

RUNNERS = {
    "webdataset": """
import webdataset as wds, torch, json
ROOT = Path(S["ROOT"])
urls = [str(ROOT / s["path"]) for s in json.loads((ROOT / "dataset.json").read_text())["shards"]]
def to_tensor(sample):
    return torch.from_numpy(sample[0]).unsqueeze(0), int(sample[1])
dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l").to_tuple("png", "cls").map(to_tensor)
loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
""",
    "litdata": """
import io, numpy as np, torch
from PIL import Image
from litdata import StreamingDataset, StreamingDataLoader
class Decoded(StreamingDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        image = np.asarray(Image.open(io.BytesIO(item["png"])), dtype=np.float32) / 255.0
        return torch.from_numpy(image).unsqueeze(0), item["label"]
loader = StreamingDataLoader(Decoded(S["LITDATA"]), batch_size=BATCH, num_workers=WORKERS)
""",
    "meddiffuse": """
from meddiffuse_stream import MedDiffuseLoader
loader = MedDiffuseLoader(S["SOURCE"], BATCH, num_workers=WORKERS, shuffle=False, storage_options=S["OPTIONS"])
""",
}

TIMER = """
import os, sys, time
sys.path.insert(0, "tools")
from process_memory import rss_of_tree as tree_rss_kb
started = time.perf_counter()
count, peak = 0, 0
for epoch in range(EPOCHS):
    for index, (images, labels) in enumerate(loader):
        assert images.dtype == torch.float32 and images.shape[1:] == (1, SIZE, SIZE)
        count += images.shape[0]
        if index % 50 == 0:
            peak = max(peak, tree_rss_kb(os.getpid()))
elapsed = time.perf_counter() - started
print(json.dumps({"samples": count, "seconds": elapsed, "peak_rss_mb": peak / 1024}))
"""


def run(
    name: str, settings: dict[str, object], env: dict[str, str] | None = None, cores: set[int] | None = None
) -> dict[str, float]:
    header = (
        "import json, torch\nfrom pathlib import Path\n"
        f"S = json.loads({json.dumps(settings)!r})\n"
        "BATCH, WORKERS, EPOCHS, SIZE = S['BATCH'], S['WORKERS'], S['EPOCHS'], S['SIZE']\n"
    )
    code = header + RUNNERS[name] + TIMER
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None  # workers inherit it
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1200,
                            env={**os.environ, **(env or {})}, preexec_fn=pin)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["rate"] = figures["samples"] / figures["seconds"]
    return figures


def build(scratch: Path, count: int, size: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_shard import make_inputs

    from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset

    images = make_inputs(scratch / "images", count, size)
    shards = scratch / "shards"
    convert_dataset(ImageFolderSource(), str(images), str(shards),
                    ConvertOptions(splits={"train": 1.0}, shard_size=1000, workers=2), progress=False)  # fmt: skip
    litdata_dir = scratch / "litdata"
    code = f"""
import io, tarfile, json
from pathlib import Path
from litdata import optimize
root = Path({str(shards)!r})
paths = [str(root / s["path"]) for s in json.loads((root / "dataset.json").read_text())["shards"]]
def samples(path):
    with tarfile.open(path) as archive:
        members = {{m.name: archive.extractfile(m).read() for m in archive.getmembers()}}
    for name, data in members.items():
        if name.endswith(".png") and not name.endswith(".roi.png"):
            key = name[:-4]
            yield {{"png": data, "label": int(members[key + ".cls"])}}
if __name__ == "__main__":
    optimize(fn=samples, inputs=paths, output_dir={str(litdata_dir)!r}, chunk_bytes="64MB", num_workers=2)
"""
    script = scratch / "optimize_litdata.py"
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, cwd=scratch, timeout=1200)
    return shards, litdata_dir


def rss_growth(source: str, batch: int, workers: int, epochs: int = 10) -> float:
    from meddiffuse_stream import MedDiffuseLoader

    with MedDiffuseLoader(source, batch, num_workers=workers) as loader:
        after: dict[int, int] = {}
        for epoch in range(epochs):
            for _ in loader:
                pass
            after[epoch + 1] = rss_of_tree(os.getpid())
    return (after[epochs] - after[2]) / after[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".bench/loader.json")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        shards, litdata_dir = build(scratch, args.count, args.size)
        common = {"BATCH": args.batch, "WORKERS": args.workers, "EPOCHS": args.epochs, "SIZE": args.size}
        settings = {
            "webdataset": {"ROOT": str(shards), **common},
            "litdata": {"LITDATA": str(litdata_dir), **common},
            "meddiffuse": {"SOURCE": str(shards), "OPTIONS": None, **common},
        }
        rates: dict[str, list[float]] = {name: [] for name in RUNNERS}
        peaks: dict[str, float] = {}
        for _ in range(args.rounds):
            for name in RUNNERS:
                figures = run(name, settings[name])
                rates[name].append(figures["rate"])
                peaks[name] = max(peaks.get(name, 0.0), figures["peak_rss_mb"])
                print(f"{name:12s} {figures['rate']:8.0f} samples/s")
        median = {name: statistics.median(values) for name, values in rates.items()}
        results: dict[str, object] = {
            "setup": {**common, "count": args.count, "rounds": args.rounds, "cpu_count": os.cpu_count()},
            "samples_per_s": {k: round(v, 1) for k, v in median.items()},
            "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
            "ratio_vs_webdataset": round(median["meddiffuse"] / median["webdataset"], 3),
            "ratio_vs_litdata": round(median["meddiffuse"] / median["litdata"], 3),
        }
        results.update(s3_figures(shards, settings["meddiffuse"], args.rounds))
        results["rss_growth_10_epochs"] = round(rss_growth(str(shards), args.batch, args.workers), 4)
    for name in ("ratio_vs_webdataset", "ratio_vs_litdata", "ratio_s3_vs_local", "ratio_s3_via_s3fs_vs_local",
                 "server_on_loader_cores", "rss_growth_10_epochs"):  # fmt: skip
        print(f"{name:26s} {results[name]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


def s3_figures(shards: Path, settings: dict[str, object], rounds: int) -> dict[str, object]:
    """The loader from SeaweedFS against local disk, worker processes reading shards through obstore (the default)
    and through s3fs, in two settings, runs alternating: the server on a core of its own and the loader on the
    others, as with a store that is not on the training node (the headline ratios); and the server sharing every
    core with the loader (how much of them it took is reported)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import s3fs
    from seaweed import seaweed_server

    cores = sorted(os.sched_getaffinity(0))
    own_core, loader_cores = {cores[-1]}, set(cores[:-1]) or None
    with seaweed_server() as server:
        fs = s3fs.S3FileSystem(**server.storage_options)
        fs.mkdir("bench")
        fs.put(str(shards), "bench/shards", recursive=True)
        remote = {**settings, "SOURCE": "s3://bench/shards", "OPTIONS": server.storage_options}
        via_s3fs = {"MEDDIFFUSE_S3_READER": "fsspec"}
        rates: dict[str, list[float]] = {}
        server_share = []
        for _ in range(rounds):
            _pin_tree(server.process.pid, own_core)
            for name, source, env in (("local", settings, None), ("s3", remote, None), ("s3fs", remote, via_s3fs)):
                rates.setdefault(name, []).append(run("meddiffuse", source, env, loader_cores)["rate"])
            _pin_tree(server.process.pid, set(cores))
            rates.setdefault("shared local", []).append(run("meddiffuse", settings)["rate"])
            before = _cpu_seconds(server.process.pid)
            figures = run("meddiffuse", remote)
            rates.setdefault("shared s3", []).append(figures["rate"])
            server_share.append((_cpu_seconds(server.process.pid) - before) / (figures["seconds"] * len(cores)))
            rates.setdefault("shared s3fs", []).append(run("meddiffuse", remote, via_s3fs)["rate"])
            time.sleep(0.1)
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in median.items():
        print(f"meddiffuse {name:12s} {rate:8.0f} samples/s")
    return {
        "s3_setup": f"server pinned to CPU {cores[-1]}, loader to CPUs {sorted(loader_cores or cores)}",
        **_s3_summary(median, ""),
        "server_on_loader_cores": {
            **_s3_summary(median, "shared "),
            "server_cpu_share": round(statistics.median(server_share), 3),
        },
    }


def _s3_summary(median: dict[str, float], setting: str) -> dict[str, float]:
    local, s3, s3fs = (median[f"{setting}{name}"] for name in ("local", "s3", "s3fs"))
    return {
        "samples_per_s_local": round(local, 1),
        "samples_per_s_s3": round(s3, 1),
        "samples_per_s_s3_via_s3fs": round(s3fs, 1),
        "ratio_s3_vs_local": round(s3 / local, 3),
        "ratio_s3_via_s3fs_vs_local": round(s3fs / local, 3),
    }


def _pin_tree(pid: int, cores: set[int]) -> None:
    """Every thread of the server (weed is one process) onto ``cores``; threads it makes later inherit it."""
    for entry in [pid, *descendants(pid)]:
        for task in Path(f"/proc/{entry}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cores)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (the SeaweedFS server is one process with threads)."""
    total = 0.0
    for entry in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


if __name__ == "__main__":
    main()
