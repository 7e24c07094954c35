"""Every shard a listing finds is read or refused loudly: gzip-compressed shards (as stock WebDataset reads them),
symbolic links (inside a root the user names), splits named in shard names and folders (never mixed silently),
upper-case and ``.gz`` members, concatenated tars — and a warning naming whatever a listing leaves out."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import webdataset as wds
from test_webdataset_sources import _encoded, _epoch, _image, write_stock_shards

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.cli import main

pytestmark = pytest.mark.timeout(180)


def _gzip_file(path: Path, target: Path) -> None:
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()


@pytest.fixture
def mixed(tmp_path) -> tuple[Path, dict[str, int]]:
    """150 samples in 3 shards of 50: one .tar, one .tar.gz, one .tgz (webdataset's own writer)."""
    folder = tmp_path / "mixed"
    labels = write_stock_shards(folder, "part-%06d.tar", 150, per_shard=50)
    _gzip_file(folder / "part-000001.tar", folder / "part-000001.tar.gz")
    _gzip_file(folder / "part-000002.tar", folder / "part-000002.tgz")
    return folder, labels


def test_gzip_compressed_shards_are_read_as_webdataset_reads_them(mixed):
    folder, labels = mixed
    stock = wds.WebDataset(sorted(str(p) for p in folder.iterdir()), shardshuffle=False)
    assert len(list(stock)) == 150, "stock WebDataset reads all three"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing found is skipped
        with MedDiffuseLoader(str(folder), 16, as_dict=True, num_workers=2) as loader:
            assert loader.dataset.total == 150 and {k: v[0] for k, v in _epoch(loader).items()} == labels
    listed = [str(folder / "part-000000.tar"), str(folder / "part-000001.tar.gz"), str(folder / "part-000002.tgz")]
    for source in (listed, str(folder / "part-*"), str(folder / "part-{000000.tar,000001.tar.gz,000002.tgz}")):
        with MedDiffuseLoader(source, 16, as_dict=True) as loader:
            assert len(_epoch(loader)) == 150, source
    with MedDiffuseLoader(str(folder / "part-000002.tgz"), 16, as_dict=True) as loader:  # one shard, by its URL
        assert len(_epoch(loader)) == 50


def test_gzip_shards_are_indexed_counted_and_verified(mixed):
    folder, labels = mixed
    assert main(["index", str(folder), "--quiet"]) == 0
    index = json.loads((folder / "shardindex.json").read_text())
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [
        ("part-000000.tar", 50),
        ("part-000001.tar.gz", 50),
        ("part-000002.tgz", 50),
    ]
    with MedDiffuseLoader(str(folder), 16, as_dict=True, num_workers=1, cache_dir=str(folder.parent / "c")) as loader:
        assert loader.dataset.origin == "shard index" and {k: v[0] for k, v in _epoch(loader).items()} == labels
        assert loader.counters["shards_verified"] == 3


def test_a_corrupt_gzip_shard_is_named(mixed):
    folder, _ = mixed
    data = (folder / "part-000001.tar.gz").read_bytes()
    (folder / "part-000001.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"part-000001\.tar\.gz: corrupt or cut-short gzip stream"):
        with MedDiffuseLoader(str(folder), 10, on_error="skip") as loader:
            assert loader.dataset.shards[1].samples < 50


def _snapshot(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """A Hugging Face cache: snapshots/<rev>/*.tar are links to ../../blobs/<hash>."""
    repo = tmp_path / "hub" / "datasets--x"
    shards = tmp_path / "made"
    labels = write_stock_shards(shards, "train-%06d.tar", 20, per_shard=10)
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for shard in sorted(shards.glob("*.tar")):
        blob = repo / "blobs" / f"blob{shard.stem[-1]}"
        shutil.move(shard, blob)
        (snapshot / shard.name).symlink_to(os.path.relpath(blob, snapshot))
    return repo, snapshot, labels


def test_symlinked_shards_are_followed_inside_the_root_named_and_refused_outside(tmp_path, capsys):
    repo, snapshot, labels = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"train-000000\.tar is a symbolic link to .*blobs.*link_root="):
        MedDiffuseLoader(str(snapshot), 4)
    with pytest.raises(ValueError, match="link_root="):
        MedDiffuseLoader([str(snapshot / "train-000000.tar")], 4)  # named by its URL: the same rule
    with MedDiffuseLoader(str(snapshot), 4, as_dict=True, link_root=str(repo), num_workers=1) as loader:
        assert {k: v[0] for k, v in _epoch(loader).items()} == labels
    assert main(["index", str(snapshot), "--quiet", "--link-root", str(repo)]) == 0
    index = json.loads((snapshot / "shardindex.json").read_text())
    assert [e["url"] for e in index["shardlist"]] == ["train-000000.tar", "train-000001.tar"], "the links' names"
    assert main(["index", str(snapshot), "--quiet", "--out", str(tmp_path / "elsewhere.json")]) == 1
    assert "--link-root" in capsys.readouterr().err
    inside = tmp_path / "annex"  # git-annex: links into .git/annex below the folder named
    (inside / ".git" / "annex").mkdir(parents=True)
    for blob in sorted((repo / "blobs").iterdir()):
        shutil.copy(blob, inside / ".git" / "annex" / blob.name)
        (inside / f"train-00000{blob.name[-1]}.tar").symlink_to(f".git/annex/{blob.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # .git/ is hidden: not named as skipped
        loader = MedDiffuseLoader(str(inside), 4, as_dict=True)
    with loader:
        assert {k: v[0] for k, v in _epoch(loader).items()} == labels
    (inside / "train-000009.tar").symlink_to(".git/annex/not-fetched")
    with pytest.raises(FileNotFoundError, match=r"train-000009\.tar is a symbolic link .*does not exist.*git annex"):
        MedDiffuseLoader(str(inside), 4)


def test_split_names_in_shard_names_and_folders(tmp_path):
    folder = tmp_path / "imagenet"
    train = write_stock_shards(folder, "imagenet-train-%06d.tar", 12, per_shard=6)
    val = write_stock_shards(folder, "imagenet_val_%04d.tar", 5, start=100)
    with MedDiffuseLoader(str(folder), 4, as_dict=True) as loader:
        assert loader.split == "train" and set(_epoch(loader)) == set(train), "validation never in training"
    with MedDiffuseLoader(str(folder), 4, split="val", as_dict=True) as loader:
        assert set(_epoch(loader)) == set(val)
    with pytest.raises(ValueError, match=r"splits \['train', 'val'\].*would read them as one set"):
        MedDiffuseLoader(str(folder / "imagenet*.tar"), 4)
    with MedDiffuseLoader(str(folder / "imagenet*.tar"), 4, split="val", as_dict=True) as loader:
        assert set(_epoch(loader)) == set(val)
    nested = tmp_path / "nested"
    write_stock_shards(nested / "data-train", "part-%06d.tar", 6)
    write_stock_shards(nested / "data-test", "part-%06d.tar", 4, start=50)
    with MedDiffuseLoader(str(nested), 4, split="test", as_dict=True) as loader:
        assert len(_epoch(loader)) == 4
    write_stock_shards(nested, "extra-%06d.tar", 3, start=90)
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\] and 1 shard\(s\) without one.*extra-000000"):
        MedDiffuseLoader(str(nested), 4)
    with MedDiffuseLoader(str(nested), 4, split="train", as_dict=True) as loader:
        assert len(_epoch(loader)) == 6
    plain = tmp_path / "contest"  # a split word inside another word is not a split
    write_stock_shards(plain, "contest-trainval-%06d.tar", 5)
    with MedDiffuseLoader(str(plain), 4) as loader:
        assert loader.split is None and loader.dataset.total == 5


def test_a_listing_names_every_file_it_does_not_read(tmp_path):
    folder = tmp_path / "shards"
    write_stock_shards(folder, "train-%06d.tar", 7)
    (folder / "README.md").write_text("a dataset")
    (folder / "train-000009.tar.zst").write_bytes(b"zstd")
    (folder / ".gitattributes").write_text("*.tar filter=lfs")
    with pytest.warns(RuntimeWarning) as caught:
        MedDiffuseLoader(str(folder), 4).close()
    (message,) = [str(w.message) for w in caught if "not read as shards" in str(w.message)]
    assert "2 file(s)" in message and "README.md (not a shard)" in message and ".gitattributes" not in message
    assert "train-000009.tar.zst (an archive the loader cannot read" in message
    with pytest.warns(RuntimeWarning, match=r"README\.md \(not a shard\)"):
        MedDiffuseLoader(str(folder / "*"), 4).close()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_imagenet_style_members_and_concatenated_tars_are_read_whole(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    png = _encoded(_image(1), "PNG")
    first = _tar([("n01.JPEG", _encoded(_image(2), "JPEG")), ("n01.CLS", b"1"), ("n02.PNG", png), ("n02.cls", b"0")])
    second = _tar([("n03.png", png), ("n03.cls.gz", gzip.compress(b"2")), ("n04.png", png), ("n04.CLS.GZ", b"x")])
    (folder / "part-000000.tar").write_bytes(first + second)  # cat first.tar second.tar
    stock = list(wds.WebDataset(str(folder / "part-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in stock] == ["n01", "n02"], "stock WebDataset stops at the first end marker"
    with MedDiffuseLoader(str(folder), 4, as_dict=True, shuffle=False, on_error="skip") as loader:
        batch = next(iter(loader))
        assert loader.dataset.total == 4
        good = [k for k, p in zip(batch["key"], batch["is_padding"].tolist(), strict=True) if not p]
        assert good == ["n01", "n02", "n03"] and batch["label"][:3].tolist() == [1, 0, 2]
        assert loader.counters["skipped:refused tar member"] == 1, "n04's .gz member is not gzip: named, refused"
