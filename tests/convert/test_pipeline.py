"""The conversion pipeline: determinism, parallel workers, resume after a kill, atomicity, webdataset interop."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import make_imagefolder, write_image
from readback import check_accounting, load_dataset, pixels

from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset
from meddiffuse_stream.convert.pipeline import PROGRESS_DIR

REPO = Path(__file__).resolve().parents[2]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and PROGRESS_DIR not in p.parts
    }


@pytest.fixture
def folder(tmp_path):
    return make_imagefolder(tmp_path / "in", {"a": 30, "b": 25}, size=16)


def test_same_seed_same_bytes_and_two_workers_match_one(folder, tmp_path):
    options = {"shard_size": 7, "seed": 3}
    convert_dataset(ImageFolderSource(), str(folder), str(tmp_path / "one"), ConvertOptions(**options), progress=False)
    convert_dataset(
        ImageFolderSource(), str(folder), str(tmp_path / "again"), ConvertOptions(**options), progress=False
    )
    convert_dataset(
        ImageFolderSource(), str(folder), str(tmp_path / "two"), ConvertOptions(workers=2, **options), progress=False
    )
    one = _digests(tmp_path / "one")
    assert one == _digests(tmp_path / "again") == _digests(tmp_path / "two")
    other = tmp_path / "seed4"
    convert_dataset(ImageFolderSource(), str(folder), str(other), ConvertOptions(shard_size=7, seed=4), progress=False)
    assert _digests(other) != one


def test_rerun_reuses_verified_shards_and_rebuilds_a_damaged_one(folder, tmp_path):
    out = tmp_path / "out"
    first = convert_dataset(ImageFolderSource(), str(folder), str(out), ConvertOptions(shard_size=10), progress=False)
    before = _digests(out)
    again = convert_dataset(ImageFolderSource(), str(folder), str(out), ConvertOptions(shard_size=10), progress=False)
    assert again.reused_shards == first.shards and _digests(out) == before
    damaged = out / "train" / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    third = convert_dataset(ImageFolderSource(), str(folder), str(out), ConvertOptions(shard_size=10), progress=False)
    assert third.reused_shards == first.shards - 1 and _digests(out) == before


def test_changed_plan_removes_orphan_shards(folder, tmp_path):
    out = tmp_path / "out"
    convert_dataset(ImageFolderSource(), str(folder), str(out), ConvertOptions(shard_size=5), progress=False)
    convert_dataset(ImageFolderSource(), str(folder), str(out), ConvertOptions(shard_size=50), progress=False)
    dataset = load_dataset(out)
    check_accounting(dataset)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.tar"))
    assert on_disk == sorted(s["path"] for s in dataset["info"]["shards"])


def test_shard_bytes_caps_shards_by_input_size(folder, tmp_path):
    size = (folder / "a" / "img000.png").stat().st_size
    summary = convert_dataset(
        ImageFolderSource(), str(folder), str(tmp_path / "o"), ConvertOptions(shard_bytes=size * 4), progress=False
    )
    info = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert summary.shards >= 55 // 4 and max(s["samples"] for s in info["shards"]) <= 4


def test_killed_conversion_resumes_to_the_same_result(tmp_path):
    command = [
        sys.executable,
        "-m",
        "meddiffuse_stream.cli",
        "demo-data",
        "--n",
        "1500",
        "--shard-size",
        "20",
        "--quiet",
    ]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run([*command, str(clean)], check=True, capture_output=True, cwd=REPO)
    process = subprocess.Popen([*command, str(killed)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / PROGRESS_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(progress.glob("*.json"))) < 5:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(progress.glob("*.json")))
    assert 5 <= done < 75, "the kill must land mid-run"
    assert not (killed / "dataset.json").exists()  # nothing is listed before every shard is complete
    result = subprocess.run([*command, str(killed)], check=True, capture_output=True, text=True, cwd=REPO)
    assert f"({done} reused)" in result.stdout or f"({done + 1} reused)" in result.stdout
    assert _digests(killed) == _digests(clean)
    assert not list(killed.rglob("*.tmp-*"))


def test_stock_webdataset_reads_every_sample_unchanged(tmp_path):
    import webdataset as wds

    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
    write_image(root / "x" / "deep.png", deep)
    make_imagefolder(root, {"x": 5, "y": 5}, size=12)
    out = tmp_path / "out"
    convert_dataset(ImageFolderSource(), str(root), str(out), ConvertOptions(splits={"train": 1.0}), progress=False)
    urls = [str(out / s["path"]) for s in json.loads((out / "dataset.json").read_text())["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):  # raw bytes: nothing decoded behind our back
        seen[sample["__key__"]] = sample
    assert len(seen) == 11
    assert all(set(s) >= {"png", "cls", "json"} and json.loads(s["json"])["key"] == k for k, s in seen.items())
    assert np.array_equal(pixels(seen["x_deep"]["png"]), deep)
    assert {int(s["cls"]) for s in seen.values()} == {0, 1}
    labels = [int(s["cls"]) for s in wds.WebDataset(urls, shardshuffle=False).decode()]
    assert sorted(labels) == sorted(int(s["cls"]) for s in seen.values())


def test_memory_urls_are_refused_with_several_workers(folder):
    with pytest.raises(ValueError, match="memory:// is private to one process"):
        convert_dataset(ImageFolderSource(), str(folder), "memory://x", ConvertOptions(workers=2), progress=False)


def test_memory_filesystem_round_trip(folder):
    import fsspec

    summary = convert_dataset(ImageFolderSource(), str(folder), "memory://ds", ConvertOptions(), progress=False)
    fs = fsspec.filesystem("memory")
    info = json.loads(fs.cat("/ds/dataset.json"))
    assert info["counts"]["converted"] == summary.converted == 55
    assert all(fs.size(f"/ds/{s['path']}") == s["bytes"] for s in info["shards"])


def test_a_changed_source_file_of_the_same_size_is_reconverted(tmp_path):
    """Resume's rule: a file is unchanged while size and mtime_ns are; a finished download or a re-export is not."""
    src = make_imagefolder(tmp_path / "in", {"a": 6, "b": 6}, size=8)
    final = (src / "a" / "img000.png").read_bytes()
    (src / "a" / "img000.png").write_bytes(bytes(len(final)))  # a partial download: zero-filled, full size
    rng = np.random.default_rng(5)
    old, new = rng.integers(0, 256, (8, 8), dtype=np.uint8), rng.integers(0, 256, (8, 8), dtype=np.uint8)
    write_image(src / "b" / "scan.bmp", old)  # BMP: the same size on disk whatever the pixels
    out = tmp_path / "out"
    options = ConvertOptions(splits={"train": 1.0}, shard_size=4)
    first = convert_dataset(ImageFolderSource(), str(src), str(out), options, progress=False)
    assert first.rejected == 1 and first.converted == 12
    time.sleep(0.05)
    (src / "a" / "img000.png").write_bytes(final)  # the download completes
    size = (src / "b" / "scan.bmp").stat().st_size
    write_image(src / "b" / "scan.bmp", new)  # re-exported with new pixels
    assert (src / "b" / "scan.bmp").stat().st_size == size
    second = convert_dataset(ImageFolderSource(), str(src), str(out), options, progress=False)
    assert second.rejected == 0 and second.converted == 13
    assert 0 < second.reused_shards < first.shards  # only the shards holding the changed files were rebuilt
    dataset = load_dataset(out)
    assert np.array_equal(pixels(dataset["samples"]["b_scan"]["png"]), new)
    third = convert_dataset(ImageFolderSource(), str(src), str(out), options, progress=False)
    assert third.reused_shards == third.shards
