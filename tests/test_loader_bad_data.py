"""Bad data inside shards: raise naming shard and key by default; skip and count with on_error="skip"."""

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import LoaderDataError
from meddiffuse_stream.shardfmt import EncodedSample, ShardWriter, encode_png

GOOD_PNG = encode_png(np.full((6, 6), 100, np.uint8))


class _Boom:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/meddiffuse-unpickled-marker"), "unpickled!"))


def _sample(key: str, **members: bytes) -> EncodedSample:
    defaults = {"png": GOOD_PNG, "cls": b"1", "json": b"{}"}
    defaults.update(members)
    return EncodedSample(
        key, tuple((f"{key}.{k.replace('_', '.')}", v) for k, v in defaults.items() if v is not None), 0
    )


def _write(root: Path, shards: list[list[EncodedSample]], *, record_sha: bool = True) -> Path:
    entries = []
    for index, samples in enumerate(shards):
        buffer = io.BytesIO()
        writer = ShardWriter(buffer)
        for sample in samples:
            writer.add(sample)
        size, digest = writer.close()
        path = f"train/train-{index:06d}.tar"
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(buffer.getvalue())
        entries.append(
            {
                "path": path,
                "split": "train",
                "samples": len(samples),
                "bytes": size,
                "sha256": digest if record_sha else None,
            }
        )
    (root / "dataset.json").write_text(json.dumps({"format_version": 1, "class_names": ["a", "b"], "shards": entries}))
    return root


def _good(prefix: str, count: int) -> list[EncodedSample]:
    return [_sample(f"{prefix}{i:03d}") for i in range(count)]


BAD_SAMPLES = {
    "corrupt png": (_sample("bad", png=b"\x89PNG\r\n\x1a\nnot really"), "not a readable image"),
    "missing cls": (_sample("bad", cls=None), "missing label"),
    "label out of range": (_sample("bad", cls=b"7"), "outside 0..1"),
    "label of wrong type": (_sample("bad", cls=b"1.5"), "is not an integer"),
    "json not an object": (_sample("bad", json=b"[1, 2]"), None),
    "nan in json": (_sample("bad", json=b'{"x": NaN}'), None),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_sample_raises_by_default_and_is_counted_when_skipped(tmp_path, case):
    bad, message = BAD_SAMPLES[case]
    root = _write(tmp_path, [[*_good("a", 5), bad, *_good("b", 4)], _good("c", 7)])
    as_dict = message is None  # JSON is only decoded when metadata is asked for
    with (
        MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=as_dict) as loader,
        pytest.raises(LoaderDataError) as info,
    ):
        list(loader)
    assert "train-000000.tar" in str(info.value) and "bad" in str(info.value)
    if message:
        assert message in str(info.value)
    with MedDiffuseLoader(str(root), 4, shuffle=False, on_error="skip", as_dict=as_dict) as loader:
        batches = list(loader)
        counters = loader.counters
    rows = 17 if as_dict else 16  # a dict batch holds a marked stand-in for the bad sample, a tuple leaves it out
    assert len(batches) == len(loader) == 5 and sum(len(b["key"] if as_dict else b[0]) for b in batches) == rows
    assert counters["yielded"] + counters["skipped"] == 17 and counters["skipped"] == 1 and counters["padded"] == 1


def test_pickle_members_are_never_unpickled(tmp_path):
    marker = Path("/tmp/meddiffuse-unpickled-marker")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(_Boom())
    root = _write(tmp_path, [[_sample("p", pickle=payload, pyd=payload, cls_pyd=payload), *_good("a", 3)]])
    with MedDiffuseLoader(str(root), 2, as_dict=True) as loader:
        keys = [k for batch in loader for k in batch["key"]]
    assert "p" in keys and not marker.exists()


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_tar_and_missing_shard_and_sha_mismatch(tmp_path):
    root = _write(tmp_path / "t", [_good("a", 6), _good("b", 6)], record_sha=False)
    _truncate(root / "train" / "train-000000.tar", 3 * 3072 + 700)  # three whole samples (6 blocks each), then cut
    with MedDiffuseLoader(str(root), 4, shuffle=False) as loader, pytest.raises(LoaderDataError, match="truncated"):
        list(loader)
    with MedDiffuseLoader(str(root), 4, shuffle=False, on_error="skip") as loader:
        assert len(list(loader)) == 3
        assert loader.counters["skipped:truncated or corrupt tar"] == 3 and loader.counters["yielded"] == 9

    missing = _write(tmp_path / "m", [_good("a", 4), _good("b", 4)])
    (missing / "train" / "train-000001.tar").unlink()
    with MedDiffuseLoader(str(missing), 4, shuffle=False) as loader, pytest.raises(LoaderDataError, match="000001"):
        list(loader)
    with MedDiffuseLoader(str(missing), 4, shuffle=False, on_error="skip") as loader:
        assert len(list(loader)) == 2 and loader.counters["skipped:unreadable shard"] == 4

    changed = _write(tmp_path / "s", [_good("a", 4), _good("b", 4)])
    shard = changed / "train" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[512 + len(GOOD_PNG) + 3] = 0x41  # a byte of tar padding: the tar stays valid, the sha256 does not
    shard.write_bytes(bytes(data))
    with MedDiffuseLoader(str(changed), 4, shuffle=False) as loader, pytest.raises(LoaderDataError, match="sha256"):
        list(loader)
    for cache in (None, str(tmp_path / "c")):  # read from disk or through the cache: found before any sample
        with MedDiffuseLoader(str(changed), 4, shuffle=False, on_error="skip", cache_dir=cache) as loader:
            rows = sum(len(images) for images, _ in loader)  # the 4 stand-ins are left out of tuple batches
            assert rows == 4 and len(loader) == 2 and loader.counters["integrity_errors"] == 1
            assert loader.counters["skipped:integrity error"] == 4 and loader.counters["yielded"] == 4


def test_cache_hits_on_the_second_epoch_and_stays_bounded(tmp_path):
    root = _write(tmp_path / "d", [_good(f"s{i}", 5) for i in range(4)])
    sizes = [(root / "train" / f"train-{i:06d}.tar").stat().st_size for i in range(4)]
    cache = tmp_path / "cache"
    with MedDiffuseLoader(str(root), 5, cache_dir=str(cache), cache_bytes=sum(sizes)) as loader:
        list(loader)
        list(loader)
        assert loader.counters["cache_misses"] == 4 and loader.counters["cache_hits"] == 4
    with MedDiffuseLoader(str(root), 5, cache_dir=str(cache), cache_bytes=sum(sizes)) as restarted:
        list(restarted)
        assert restarted.counters["cache_hits"] == 4 and restarted.counters["cache_misses"] == 0  # survives restarts
    with MedDiffuseLoader(str(root), 5, cache_dir=str(cache), cache_bytes=sizes[0] * 2) as loader:
        list(loader)
    assert sum(p.stat().st_size for p in cache.glob("*.tar")) <= sizes[0] * 2
    for entry in cache.glob("*.tar"):
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.stem
