#!/usr/bin/env python3
"""Benchmark of MedDiffuseLoader: where its CPU goes, how close it comes to the decoder alone, and its peers.

1. Profile (``profile``): for 64, 224 and 512 px in grey 8-bit, grey 16-bit and RGB, the CPU per sample of every
   stage of a decode worker and of the main process, each measured alone (``tools/loader_profile.py``), and the
   decode limit of this machine on the same bytes — pyspng alone in as many processes as workers — against the
   loader's rate and real CPU split, alternating for ``--profile-rounds`` (``tools/decode_limit.py``), float32
   (the default) and uint8 delivery: ``ratio_vs_decode_limit``, each run against the limit measured just before.
2. Peers (``peers``): the same PNG bytes at 64 and 224 px grey through stock webdataset + DataLoader, litdata and
   MedDiffuseLoader (float32 ``(B, 1, S, S)``, same workers and batch size); each run a fresh subprocess (peak
   memory: the sampled RSS of it and its workers), runs alternating, medians.
3. The same loader from SeaweedFS S3 against local disk (the server on a core of its own, then sharing the
   loader's cores), and memory growth over 10 epochs.

``goals`` lists each goal with its value; ``--quick`` is a small smoke run. Writes ``.bench/loader.json``.
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

from bench_images import build_litdata, build_shards
from decode_limit import against_limit
from loader_profile import image_bytes, stage_profile
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

SIZES = (64, 224, 512)
KINDS = ("grey8", "grey16", "rgb")
GOAL_CONFIGS = ("64-grey8", "224-grey8", "224-rgb")  # ratio_vs_decode_limit >= 0.8 here


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
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
        env={**os.environ, **(env or {})},
        preexec_fn=pin,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["rate"] = figures["samples"] / figures["seconds"]
    return figures


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
    parser.add_argument("--count", type=int, default=20000, help="64 px images (peers, S3, RSS)")
    parser.add_argument("--count-224", type=int, default=4000)
    parser.add_argument("--count-512", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-rounds", type=int, default=5, help="rounds of the decode-limit comparison")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (a few hundred images, 1 round)")
    args = parser.parse_args()
    if args.quick:
        args.count, args.count_224, args.count_512, args.rounds, args.epochs = 512, 256, 64, 1, 1
        args.profile_rounds = 1
    counts = {64: args.count, 224: args.count_224, 512: args.count_512}
    common = {"BATCH": args.batch, "WORKERS": args.workers, "EPOCHS": args.epochs}
    results: dict[str, object] = {
        "setup": {
            **common,
            "counts": counts,
            "rounds": args.rounds,
            "profile_rounds": args.profile_rounds,
            "cpu_count": os.cpu_count(),
        }
    }
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        shards = {
            (size, kind): build_shards(scratch, counts[size], size, kind, _shard_size(counts[size], args))
            for size in SIZES
            for kind in KINDS
        }
        results["profile"] = profile(shards, args)
        results["peers"] = {
            f"{size}-grey8": peers(scratch, shards[size, "grey8"], size, common, args.rounds) for size in (64, 224)
        }
        results.update(
            s3_figures(
                shards[64, "grey8"],
                {"SOURCE": str(shards[64, "grey8"]), "OPTIONS": None, "SIZE": 64, **common},
                args.rounds,
            )
        )
        results["rss_growth_10_epochs"] = round(rss_growth(str(shards[64, "grey8"]), args.batch, args.workers), 4)
    results["goals"] = goals(results)
    for goal in results["goals"]:  # type: ignore[union-attr]
        print(f"{goal['name']:44s} {goal['value']!s:>8} goal {goal['goal']:>8}  {'met' if goal['met'] else 'NOT met'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


def _shard_size(count: int, args: argparse.Namespace) -> int:
    """Shards of at most 1000 samples and at least 4 per worker, so no worker reads mostly partial shards."""
    return max(1, min(1000, count // (4 * args.workers)))


def profile(shards: dict[tuple[int, str], Path], args: argparse.Namespace) -> dict[str, object]:
    """Per configuration: the per-stage CPU profile and the loader against the decode limit."""
    found: dict[str, object] = {}
    for (size, kind), path in shards.items():
        name = f"{size}-{kind}"
        entry = {"stages": stage_profile(str(path), args.batch, repeats=1 if args.quick or size == 512 else 3)}
        integers = "uint16" if kind == "grey16" else "uint8"  # the stored integers, converted on the device
        entry.update(
            against_limit(
                str(path),
                image_bytes(str(path)),
                batch=args.batch,
                workers=args.workers,
                epochs=args.epochs,
                rounds=args.profile_rounds,
                dtypes=("float32", integers),
            )
        )
        found[name] = entry
        ratios = {k: v["ratio_vs_decode_limit"] for k, v in entry.items() if k.startswith("loader_")}
        print(f"{name:10s} decode limit {entry['decode_limit']['samples_per_s']:9.0f}/s  {ratios}")
    return found


def peers(scratch: Path, shards: Path, size: int, common: dict[str, int], rounds: int) -> dict[str, object]:
    """webdataset, litdata and MedDiffuseLoader on the same PNG bytes, alternating; medians and ratios."""
    litdata_dir = build_litdata(shards, scratch / f"litdata-{size}")
    settings = {
        "webdataset": {"ROOT": str(shards), "SIZE": size, **common},
        "litdata": {"LITDATA": str(litdata_dir), "SIZE": size, **common},
        "meddiffuse": {"SOURCE": str(shards), "OPTIONS": None, "SIZE": size, **common},
    }
    rates: dict[str, list[float]] = {name: [] for name in RUNNERS}
    peaks: dict[str, float] = {}
    for _ in range(rounds):
        for name in RUNNERS:
            figures = run(name, settings[name])
            rates[name].append(figures["rate"])
            peaks[name] = max(peaks.get(name, 0.0), figures["peak_rss_mb"])
            print(f"{size} px {name:12s} {figures['rate']:8.0f} samples/s")
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "samples_per_s": {k: round(v, 1) for k, v in median.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        "ratio_vs_webdataset": round(median["meddiffuse"] / median["webdataset"], 3),
        "ratio_vs_litdata": round(median["meddiffuse"] / median["litdata"], 3),
    }


def goals(results: dict[str, object]) -> list[dict[str, object]]:
    """Each goal of the issue with this run's value: ``ratio_vs_decode_limit`` ≥ 0.8 at 64 and 224 px (grey, RGB;
    float32, the default, and uint8 delivery), ≥ 1.5× litdata at 224 px, the 64 px, S3 and RSS goals kept."""
    profile_, peers_ = results["profile"], results["peers"]
    rows: list[tuple[str, float, float, bool]] = []
    for name in GOAL_CONFIGS:
        for dtype in ("float32", "uint8"):
            value = profile_[name][f"loader_{dtype}"]["ratio_vs_decode_limit"]  # type: ignore[index]
            rows.append((f"ratio_vs_decode_limit {name} {dtype}", value, 0.8, True))
    rows.append(("ratio_vs_litdata 224-grey8", peers_["224-grey8"]["ratio_vs_litdata"], 1.5, True))  # type: ignore[index]
    rows.append(("ratio_vs_litdata 64-grey8", peers_["64-grey8"]["ratio_vs_litdata"], 1.0, True))  # type: ignore[index]
    rows.append(("ratio_s3_vs_local", results["ratio_s3_vs_local"], 0.9, True))  # type: ignore[arg-type]
    rows.append(("rss_growth_10_epochs", results["rss_growth_10_epochs"], 0.05, False))  # type: ignore[arg-type]
    return [
        {
            "name": name,
            "value": value,
            "goal": (">= " if at_least else "< ") + str(goal),
            "met": value >= goal if at_least else value < goal,
        }
        for name, value, goal, at_least in rows
    ]


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
