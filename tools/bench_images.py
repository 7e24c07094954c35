"""The loader benchmark's data: smooth, anatomy-like PNGs (grey 8-bit, grey 16-bit or RGB) converted to shards, and
the same PNG bytes as a litdata dataset for the peer runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["KINDS", "build_litdata", "build_shards", "make_images"]

KINDS = ("grey8", "grey16", "rgb")


def make_images(root: Path, count: int, size: int, kind: str = "grey8", seed: int = 0) -> Path:
    """``count`` PNGs of ``size`` px in two class folders: smooth structure plus noise (pure noise would make PNG
    decoding unrealistically slow), each channel drawn on its own."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        planes = []
        for _ in range(3 if kind == "rgb" else 1):
            phase = rng.uniform(0, 6.28, 3)
            smooth = np.sin(6 * xx + phase[0]) * np.cos(4 * yy + phase[1]) + np.sin(9 * (xx + yy) + phase[2])
            planes.append(128 + 50 * smooth + rng.normal(0, 6, (size, size)))
        image = np.stack(planes, axis=-1) if kind == "rgb" else planes[0]
        if kind == "grey16":
            array = np.clip(image * 256, 0, 65535).astype(np.uint16)
        else:
            array = np.clip(image, 0, 255).astype(np.uint8)
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{index:05d}.png")
    return root


def build_shards(scratch: Path, count: int, size: int, kind: str, shard_size: int) -> Path:
    """A shard dataset (one ``train`` split) of ``count`` images, converted by the project's own converter."""
    from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset

    images = make_images(scratch / f"images-{size}-{kind}", count, size, kind)
    shards = scratch / f"shards-{size}-{kind}"
    options = ConvertOptions(splits={"train": 1.0}, shard_size=shard_size, workers=2)
    convert_dataset(ImageFolderSource(), str(images), str(shards), options, progress=False)
    return shards


_OPTIMIZE = """
import tarfile, json, sys
from pathlib import Path
from litdata import optimize
root, out = Path(sys.argv[1]), sys.argv[2]
paths = [str(root / s["path"]) for s in json.loads((root / "dataset.json").read_text())["shards"]]
def samples(path):
    with tarfile.open(path) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    for name, data in members.items():
        if name.endswith(".png") and not name.endswith(".roi.png"):
            yield {"png": data, "label": int(members[name[:-4] + ".cls"])}
if __name__ == "__main__":
    optimize(fn=samples, inputs=paths, output_dir=out, chunk_bytes="64MB", num_workers=2)
"""


def build_litdata(shards: Path, out: Path) -> Path:
    """The same PNG bytes and labels as a litdata dataset (litdata's ``optimize``)."""
    script = shards.parent / "optimize_litdata.py"
    script.write_text(_OPTIMIZE)
    subprocess.run(
        [sys.executable, str(script), str(shards), str(out)],
        check=True,
        capture_output=True,
        cwd=shards.parent,
        timeout=1200,
    )
    return out
