"""Shards written by stock ``webdataset.ShardWriter``: a folder without dataset.json, globs, brace patterns, URL
lists, wids shard indexes and our own ``index`` command; WebDataset member conventions (.webp/.jpg/.tif images,
.class/.cls/.label/.txt labels, a JSON field, image_key)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.cli import main
from meddiffuse_stream.nodes import LoaderDataError
from meddiffuse_stream.shardfmt.manifest import ManifestError

pytestmark = pytest.mark.timeout(120)


def _image(index: int, size: int = 8) -> np.ndarray:
    return ((np.arange(size * size).reshape(size, size) * 3 + index * 17) % 256).astype(np.uint8)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def write_stock_shards(
    folder: Path,
    pattern: str,
    count: int,
    *,
    per_shard: int = 7,
    fmt: str = "WEBP",
    image: str = "webp",
    label: str = "class",
    start: int = 0,
) -> dict[str, int]:
    """``count`` samples through webdataset's own ShardWriter; returns ``{key: label}``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    with wds.ShardWriter(str(folder / pattern), maxcount=per_shard, verbose=0) as sink:
        for index in range(start, start + count):
            key = f"sample{index:05d}"
            labels[key] = index % 3
            value = index % 3 if label in ("cls", "class") else str(index % 3).encode()  # stock encodes ints for these
            sink.write(
                {
                    "__key__": key,
                    image: _encoded(_image(index), fmt),
                    label: value,
                    "json": {"finding": {"class": index % 3}, "index": index},
                }
            )
    return labels


def _epoch(loader: MedDiffuseLoader) -> dict[str, tuple[int, np.ndarray]]:
    seen: dict[str, tuple[int, np.ndarray]] = {}
    for batch in loader:
        for key, label, image in zip(batch["key"], batch["label"].tolist(), batch["image"], strict=True):
            assert key not in seen, f"{key} twice in one epoch"
            seen[key] = (label, image.numpy())
    return seen


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("wds") / "shards"
    return folder, write_stock_shards(folder, "train-%06d.tar", 30)  # 5 shards: 7, 7, 7, 7, 2


def test_a_folder_of_stock_webp_and_class_shards_loads_exactly_and_trains(stock):
    folder, labels = stock
    assert not (folder / "dataset.json").exists()
    with MedDiffuseLoader(str(folder), 8, as_dict=True, num_workers=2, seed=1) as loader:
        assert loader.dataset.origin == "counted" and len(loader) == 4 and loader.split == "train"
        seen = _epoch(loader)
    assert {k: v[0] for k, v in seen.items()} == labels
    for key, (_, image) in seen.items():  # lossless WebP, stored RGB: every channel is the original grey
        expected = _image(int(key[-5:])) / 255.0
        assert image.shape == (3, 8, 8) and np.allclose(image, expected[None], atol=1e-6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    with MedDiffuseLoader(str(folder), 8, num_workers=1, seed=2) as loader:
        for _ in range(3):
            for images, targets in loader:
                loss = torch.nn.functional.cross_entropy(model(images), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    assert len(losses) == 12 and np.isfinite(losses).all()


def test_globs_brace_patterns_and_url_lists_name_the_same_shards(stock):
    folder, labels = stock
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    sources = [
        str(folder / "train-*.tar"),
        str(folder / "train-{000000..000004}.tar"),
        str(folder / "train-00000{0,1,2,3,4}.tar"),
        shards,
        "file://" + str(folder / "train-{000000..000004}.tar"),
    ]
    for source in sources:
        with MedDiffuseLoader(source, 8, as_dict=True, shuffle=False) as loader:
            assert {k: v[0] for k, v in _epoch(loader).items()} == labels, source
            assert loader.split == "train", "named shards of one split: that split (their names say it)"
        with pytest.raises(ValueError, match=r"no shards for split 'val'; the dataset has \['train'\]"):
            MedDiffuseLoader(source, 8, split="val")
    with MedDiffuseLoader(str(folder / "train-00000{0,1}.tar"), 7, as_dict=True, shuffle=False) as loader:
        assert len(_epoch(loader)) == 14
    with pytest.raises(FileNotFoundError, match=r"matches no shards \(\.tar, \.tar\.gz, \.tgz\)"):
        MedDiffuseLoader(str(folder / "nothing-*.tar"), 8)
    with pytest.raises(ValueError, match="names more than"):
        MedDiffuseLoader(str(folder / "x-{0..99999999999}.tar"), 8)


def test_splits_come_from_folders_or_name_prefixes_and_unknown_ones_are_errors(tmp_path):
    train = write_stock_shards(tmp_path / "a", "train-%06d.tar", 9)
    val = write_stock_shards(tmp_path / "a", "val-%06d.tar", 5, start=100)
    with MedDiffuseLoader(str(tmp_path / "a"), 4, as_dict=True) as loader:
        assert loader.split == "train" and set(_epoch(loader)) == set(train)
    with MedDiffuseLoader(str(tmp_path / "a"), 4, split="val", as_dict=True) as loader:
        assert set(_epoch(loader)) == set(val) and loader.plan.shuffle is False
    with pytest.raises(ValueError, match=r"no shards for split 'test'; the dataset has \['train', 'val'\]"):
        MedDiffuseLoader(str(tmp_path / "a"), 4, split="test")
    write_stock_shards(tmp_path / "b" / "train", "part-%06d.tar", 4)
    write_stock_shards(tmp_path / "b" / "valid", "part-%06d.tar", 3, start=50)
    with MedDiffuseLoader(str(tmp_path / "b"), 4, split="valid", as_dict=True) as loader:
        assert len(_epoch(loader)) == 3
    write_stock_shards(tmp_path / "c", "shard-%06d.tar", 4)
    with MedDiffuseLoader(str(tmp_path / "c"), 4) as loader:
        assert loader.split is None and loader.dataset.total == 4
    with pytest.raises(ValueError, match="carry no split"):
        MedDiffuseLoader(str(tmp_path / "c"), 4, split="train")


def test_index_command_writes_an_index_loaders_read_instead_of_the_shards(stock, tmp_path, monkeypatch, capsys):
    folder, labels = stock
    copy = tmp_path / "copy"
    copy.mkdir()
    for shard in folder.glob("*.tar"):
        (copy / shard.name).write_bytes(shard.read_bytes())
    assert main(["index", str(copy), "--quiet", "--name", "stock"]) == 0
    assert "indexed 5 shards, 30 samples" in capsys.readouterr().out
    index = json.loads((copy / "shardindex.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1 and index["name"] == "stock"
    first = index["shardlist"][0]
    assert first["url"] == "train-000000.tar" and first["nsamples"] == 7 and first["split"] == "train"
    assert first["sha256"] == hashlib.sha256((copy / "train-000000.tar").read_bytes()).hexdigest()

    import meddiffuse_stream.shardfmt.sources as sources

    def no_reading(*args, **kwargs):
        raise AssertionError("a shard was read to count it although an index lists it")

    monkeypatch.setattr(sources, "inspect_shard", no_reading)
    with MedDiffuseLoader(str(copy), 8, as_dict=True) as loader:
        assert loader.dataset.origin == "shard index" and loader.dataset.shards[0].sha256 == first["sha256"]
        assert {k: v[0] for k, v in _epoch(loader).items()} == labels
        assert loader.counters["shards_verified"] == 5
    (copy / "train-000004.tar").unlink()
    with pytest.raises(ManifestError, match=r"lists shards the folder does not hold.*re-run meddiffuse-stream index"):
        MedDiffuseLoader(str(copy), 8)


def test_an_index_written_elsewhere_and_a_stock_wids_index_are_sources(stock, tmp_path):
    folder, labels = stock
    out = tmp_path / "indexes" / "stock.json"
    assert main(["index", str(folder / "train-*.tar"), "--out", str(out), "--quiet"]) == 0
    assert not (folder / "shardindex.json").exists()
    document = json.loads(out.read_text())
    assert document["shardlist"][0]["url"] == str(folder / "train-000000.tar")  # absolute: the shards are elsewhere
    with MedDiffuseLoader(str(out), 8, as_dict=True) as loader:
        assert loader.dataset.origin == "shard index" and {k: v[0] for k, v in _epoch(loader).items()} == labels
    wids = {  # what webdataset's widsindex writes: relative URLs, md5sum, no sha256
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": "stock",
        "shardlist": [
            {
                "url": p.name,
                "nsamples": n,
                "filesize": p.stat().st_size,
                "md5sum": hashlib.md5(p.read_bytes()).hexdigest(),
            }
            for p, n in zip(sorted(folder.glob("*.tar")), [7, 7, 7, 7, 2], strict=True)
        ],
    }
    (folder.parent / "wids.json").write_text(json.dumps({**wids, "base": str(folder)}))
    with MedDiffuseLoader(str(folder.parent / "wids.json"), 8, as_dict=True) as loader:
        assert {k: v[0] for k, v in _epoch(loader).items()} == labels
    wrong = {**wids, "base": str(folder), "shardlist": [{**wids["shardlist"][0], "nsamples": 6}, wids["shardlist"][1]]}
    (folder.parent / "wrong.json").write_text(json.dumps(wrong))
    with MedDiffuseLoader(str(folder.parent / "wrong.json"), 8, on_error="skip") as loader:
        batches = list(loader)
        assert loader.counters["integrity_errors"] == 1 and loader.counters["skipped:integrity error"] == 6
        assert loader.counters["yielded"] == 7
    assert len(batches) == 2


def test_webdataset_member_conventions_and_member_choice(tmp_path):
    folder = tmp_path / "conv"
    jpg = write_stock_shards(folder, "jpg-%06d.tar", 5, fmt="PNG", image="jpg", label="cls")  # named .jpg, is PNG
    write_stock_shards(folder, "tif-%06d.tar", 5, fmt="TIFF", image="tiff", label="label", start=10)
    write_stock_shards(folder, "txt-%06d.tar", 5, fmt="PNG", image="png", label="txt", start=20)
    with MedDiffuseLoader(str(folder / "*.tar"), 5, as_dict=True, shuffle=False) as loader:
        seen = _epoch(loader)
    assert len(seen) == 15 and all(seen[k][0] == label for k, label in jpg.items())
    with MedDiffuseLoader(str(folder / "*.tar"), 5, as_dict=True, label_key="json:finding.class") as loader:
        assert {k: v[0] for k, v in _epoch(loader).items()} == {k: v[0] for k, v in seen.items()}
    with MedDiffuseLoader(str(folder / "jpg-*.tar"), 5, label_key="json:missing") as loader:
        with pytest.raises(LoaderDataError, match="no field 'missing'"):
            list(loader)
    with MedDiffuseLoader(str(folder / "jpg-*.tar"), 5, image_key="tiff") as loader:
        with pytest.raises(LoaderDataError, match=r"no image member \.tiff"):
            list(loader)
    for bad in ({"image_key": ""}, {"label_key": "json:"}, {"image_key": "a/b"}):
        with pytest.raises(ValueError, match=r"image_key|label_key"):
            MedDiffuseLoader(str(folder / "jpg-*.tar"), 5, **bad)


def test_image_key_picks_among_several_images_and_16_bit_tiffs_keep_their_bits(tmp_path):
    folder = tmp_path / "multi"
    folder.mkdir()
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7).astype(np.uint16)
    with wds.ShardWriter(str(folder / "m-%06d.tar"), maxcount=10, verbose=0) as sink:
        for index in range(4):
            sink.write(
                {
                    "__key__": f"k{index}",
                    "png": _encoded(_image(index), "PNG"),
                    "seg.png": _encoded(np.zeros((8, 8), np.uint8), "PNG"),
                    "tif": _encoded(deep, "TIFF"),
                    "cls": 1,
                }
            )
    with MedDiffuseLoader(str(folder), 4, as_dict=True, shuffle=False) as loader:
        first = next(iter(loader))
    assert np.allclose(first["image"][0, 0].numpy(), _image(0) / 255.0, atol=1e-6)  # png comes first
    with MedDiffuseLoader(str(folder), 4, as_dict=True, shuffle=False, image_key="seg.png") as loader:
        assert float(next(iter(loader))["image"].max()) == 0.0
    with MedDiffuseLoader(str(folder), 4, as_dict=True, shuffle=False, image_key="tif") as loader:
        image = next(iter(loader))["image"][0, 0].double().numpy()
    assert np.allclose(image * 65535, deep, atol=1e-2), "16-bit values keep their precision"


def test_index_refuses_damaged_shards_and_converted_datasets(stock, tmp_path, capsys):
    folder, _ = stock
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for shard in sorted(folder.glob("*.tar"))[:2]:
        (damaged / shard.name).write_bytes(shard.read_bytes())
    cut = damaged / "train-000001.tar"
    cut.write_bytes(cut.read_bytes()[:3000])
    assert main(["index", str(damaged), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "train-000001.tar: truncated tar" in error and "no index written" in error
    assert not (damaged / "shardindex.json").exists()
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "dataset.json").write_text("{}")
    (converted / "a.tar").write_bytes((folder / "train-000000.tar").read_bytes())
    assert main(["index", str(converted), "--quiet"]) == 1
    assert "already lists every shard" in capsys.readouterr().err
