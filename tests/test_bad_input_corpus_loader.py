"""Bad-input corpus, the loader beyond one shard's content: labels bounded where they are parsed (one label above
2**63 in stock shards once ended the epoch with ``OverflowError``, even with ``on_error="skip"``), 16-bit images
decoded at 16 bits or refused as the converter does, and a shard swapped for a FIFO or a link out of the root after
the loader was built is refused when it is read, never opened."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from convert.test_depth import _tiff48
from test_bad_input_corpus import _around, _dataset, _good, _keys, _sample, _tar
from test_bad_input_corpus_images import png_16_grey_alpha

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.nodes import LoaderDataError

pytestmark = pytest.mark.timeout(120)


def _stock(folder: Path, shards: list[tuple[bytes, int]]) -> str:
    """Shards written by someone else: no dataset.json, so no class count bounds the labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (data, _) in enumerate(shards):
        (folder / f"stock-{index:06d}.tar").write_bytes(data)
    return str(folder / "stock-*.tar")


def _json_labelled(key: str, label: bytes) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", _sample(key)[0][1]), (f"{key}.json", b'{"label": ' + label + b"}")]


HUGE = [b"18446744073709551616", b"9223372036854775808", b"1" + b"0" * 300]


@pytest.mark.parametrize("label", HUGE)
@pytest.mark.parametrize("where", ["cls", "json"])
def test_a_label_of_any_width_is_an_error_or_a_counted_skip_never_an_overflow(tmp_path, label, where):
    if where == "cls":
        shards, total, good = _around(*_sample("bad", cls=label))
        options: dict = {}
    else:
        members = [m for i in range(5) for m in _json_labelled(f"a{i:03d}", b"1")]
        members += _json_labelled("bad", label) + [m for i in range(4) for m in _json_labelled(f"b{i:03d}", b"0")]
        shards = [(_tar(members), 10), (_tar([m for i in range(7) for m in _json_labelled(f"c{i:03d}", b"1")]), 7)]
        total, good = 17, _keys("a", 5) | _keys("b", 4) | _keys("c", 7)
        options = {"label_key": "json:label"}
    source = _stock(tmp_path / "stock", shards)
    with MedDiffuseLoader(source, 4, shuffle=False, **options) as loader, pytest.raises(LoaderDataError) as info:
        list(loader)
    assert "outside 0.." in str(info.value) and "bad" in str(info.value), str(info.value)
    with MedDiffuseLoader(source, 4, shuffle=False, as_dict=True, on_error="skip", **options) as loader:
        keys = {k for batch in loader for k in batch["key"]}
        counters = dict(loader.counters)
    assert keys == good and counters["yielded"] + counters["skipped"] == total, counters


def _tiff_16_bit_colour() -> bytes:
    return _tiff48(np.full((6, 6, 3), 40000, np.uint16))  # Pillow would read the high byte of each channel


def test_16_bit_grey_with_alpha_is_delivered_at_16_bits(tmp_path):
    grey = np.zeros((6, 6), np.uint16)
    grey[0, :4] = [0, 1000, 40000, 65535]
    shards, _, _ = _around(*_sample("bad", png=png_16_grey_alpha(grey)))
    root = _dataset(tmp_path, shards)
    with MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=True) as loader:
        image = next(b["image"][b["key"].index("bad")] for b in loader if "bad" in b["key"])
    assert image.dtype == torch.float32 and image.shape[0] == 1
    assert abs(float(image[0, 0, 1]) - 1000 / 65535) < 1e-6, "grey kept at 16 bits, not cut to 8"


def test_16_bit_colour_tiff_is_refused_as_the_converter_refuses_it(tmp_path):
    shards, total, good = _around(*_sample("bad", png=None, tiff=_tiff_16_bit_colour()))
    root = _dataset(tmp_path, shards)
    with MedDiffuseLoader(str(root), 4, shuffle=False) as loader, pytest.raises(LoaderDataError) as info:
        list(loader)
    assert "16-bit colour TIFF" in str(info.value)
    with MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=True, on_error="skip") as loader:
        keys = {k for batch in loader for k in batch["key"]}
        counters = dict(loader.counters)
    assert keys == good and counters["yielded"] + counters["skipped"] == total


def _epoch_within(loader, fifo: Path | None, seconds: float = 30) -> BaseException | None:
    """Run one epoch in a thread; a read blocked on ``fifo`` is released (and the test fails)."""
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            list(loader)
            outcome["error"] = None
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("the epoch blocked opening a FIFO")
    return outcome["error"]


@pytest.mark.parametrize("swap", ["fifo", "link out of the root"])
def test_a_shard_swapped_after_the_loader_was_built_is_refused_when_read(tmp_path, swap):
    """In-process reads (worker processes start reading ahead as the loader is built, before a swap could land)."""
    root = _dataset(tmp_path / "ds", [(_tar(_good("a", 8)), 8), (_tar(_good("c", 7)), 7)])
    shard = root / "train" / "train-000000.tar"
    loaders = [MedDiffuseLoader(str(root), 4, shuffle=False, num_workers=0, on_error=e) for e in ("raise", "skip")]
    data = shard.read_bytes()
    shard.unlink()
    if swap == "fifo":
        os.mkfifo(shard)
    else:
        (tmp_path / "outside.tar").write_bytes(data)  # the same bytes: only the place is wrong
        shard.symlink_to(tmp_path / "outside.tar")
    fifo = shard if swap == "fifo" else None
    with loaders[0] as loader:
        error = _epoch_within(loader, fifo)
    assert isinstance(error, LoaderDataError), repr(error)
    assert ("FIFO" if swap == "fifo" else "outside the dataset") in str(error) and "train-000000" in str(error)
    with loaders[1] as loader:
        assert _epoch_within(loader, fifo) is None
        counters = dict(loader.counters)
    assert counters["yielded"] == 7 and counters["yielded"] + counters["skipped"] == 15, counters
