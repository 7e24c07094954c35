"""A corpus of bad input, generated here: for each kind the converter or the loader handles it correctly or reports it
with a clear reason (raise by default, skip and count with on_error="skip"), never crashes, never hangs, and the
books balance: converted + rejected = found, yielded + skipped = total."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import small_dicom, write_image

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.convert import ConvertOptions, convert_dataset
from meddiffuse_stream.convert.imagefolder import ImageFolderSource
from meddiffuse_stream.nodes import LoaderDataError
from meddiffuse_stream.shardfmt import encode_png

pytestmark = pytest.mark.timeout(120)  # "never hang" is part of every case

PNG = encode_png(np.arange(36, dtype=np.uint8).reshape(6, 6))
Member = tuple[str, bytes]  # (name, data); a name starting with "->" or "=>" is a symbolic or hard link


def _png_bomb(side: int = 40_000) -> bytes:
    """A valid 1-bit PNG header for side x side pixels with a tiny compressed body: decoding would need GBs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (side // 8 + 1) * 64, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _png16() -> bytes:
    values = np.zeros((6, 6), dtype=np.uint16)
    values[0, :4] = [0, 1000, 40000, 65535]
    return encode_png(values)


def _palette_png() -> bytes:
    from PIL import Image

    image = Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6)).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sample(key: str, **members: bytes | None) -> list[Member]:
    parts: dict[str, bytes | None] = {"png": PNG, "cls": b"1", "json": b"{}"}
    parts.update(members)
    return [(f"{key}.{suffix.replace('_', '.')}", data) for suffix, data in parts.items() if data is not None]


def _tar(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.lstrip("-=>") if name[:2] in ("->", "=>") else name)
            if name.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif name.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, "a000.png"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _open_tar(members: list[Member]) -> bytes:
    """Members with no end-of-archive marker after them (the archive is never closed)."""
    buffer = io.BytesIO()
    tar = tarfile.TarFile(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT)
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zero_block_inside_a_sample() -> Case:
    """A zero (end-of-archive) block between a sample's image and its label: the reader reads on past it (tar
    files joined end to end are one shard), but a sample split by it is a tar fault; before, its image alone was
    reported as "missing label"."""
    first = _open_tar(_good("a", 5) + _sample("bad", cls=None, json=None))
    rest = _tar([("bad.cls", b"1"), ("bad.json", b"{}"), *_good("b", 4)])
    return (
        [(first + b"\0" * 512 + rest, 10), (_tar(_good("c", 7)), 7)],
        17,
        _keys("a", 5) | _keys("b", 4) | _keys("c", 7),
    )


def _dataset(root: Path, shards: list[tuple[bytes, int]], *, sha: bool = False) -> Path:
    """Shards as given, listed in dataset.json with the sample count each claims."""
    import hashlib

    entries = []
    (root / "train").mkdir(parents=True, exist_ok=True)
    for index, (data, samples) in enumerate(shards):
        path = f"train/train-{index:06d}.tar"
        (root / path).write_bytes(data)
        entries.append(
            {
                "path": path,
                "split": "train",
                "samples": samples,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest() if sha else None,
            }
        )
    (root / "dataset.json").write_text(json.dumps({"format_version": 1, "class_names": ["a", "b"], "shards": entries}))
    return root


def _good(prefix: str, count: int) -> list[Member]:
    return [member for i in range(count) for member in _sample(f"{prefix}{i:03d}")]


def _keys(prefix: str, count: int) -> set[str]:
    return {f"{prefix}{i:03d}" for i in range(count)}


Case = tuple[list[tuple[bytes, int]], int, set[str]]  # shards with their listed counts, total listed, good keys


def _around(*bad: Member) -> Case:
    """5 good samples, the bad one, 4 good ones in shard 0; 7 good in shard 1; 17 listed in total."""
    shards = [(_tar(_good("a", 5) + list(bad) + _good("b", 4)), 10), (_tar(_good("c", 7)), 7)]
    return shards, 17, _keys("a", 5) | _keys("b", 4) | _keys("c", 7)


# kind -> (case builder, the message when raised; None: handled, nothing to report)
SHARD_CASES: dict[str, tuple[Callable[[], Case], str | None]] = {
    "corrupt png": (lambda: _around(*_sample("bad", png=b"\x89PNG\r\n\x1a\nnot really")), "not a readable image"),
    "corrupt jpeg": (lambda: _around(*_sample("bad", png=None, jpg=b"\xff\xd8\xff\xe0garbage")), "not a readable"),
    "zero-byte image": (lambda: _around(*_sample("bad", png=b"")), "not a readable image"),
    "zero-byte label": (lambda: _around(*_sample("bad", cls=b"")), "is not an integer"),
    "png decompression bomb": (lambda: _around(*_sample("bad", png=_png_bomb())), "over the pixel limit"),
    "missing cls": (lambda: _around(*_sample("bad", cls=None)), "missing label"),
    "no image member": (lambda: _around(*_sample("bad", png=None)), "no image member"),
    "label out of range": (lambda: _around(*_sample("bad", cls=b"7")), "outside 0..1"),
    "label of wrong type": (lambda: _around(*_sample("bad", cls=b"1.5")), "is not an integer"),
    "nan label": (lambda: _around(*_sample("bad", cls=b"nan")), "is not an integer"),
    "inf label": (lambda: _around(*_sample("bad", cls=b"inf")), "is not an integer"),
    "nan in json": (lambda: _around(*_sample("bad", json=b'{"x": NaN}')), "non-finite"),
    "infinity in json": (lambda: _around(*_sample("bad", json=b'{"x": -Infinity}')), "non-finite"),
    "number overflowing a float in json": (lambda: _around(*_sample("bad", json=b'{"x": 1e400}')), "non-finite"),
    "json not an object": (lambda: _around(*_sample("bad", json=b"[1, 2]")), "expected an object"),
    "huge json": (lambda: _around(*_sample("bad", json=b'{"x": "' + b"a" * (2 << 20) + b'"}')), "byte limit"),
    "member path with ..": (lambda: _around(*_sample("../bad")), "unsafe member path"),
    "absolute member path": (lambda: _around(*_sample("/tmp/bad")), "unsafe member path"),
    "symbolic link member": (lambda: _around(("->bad.png", b""), ("bad.cls", b"1")), "symbolic link"),
    "hard link member": (lambda: _around(("=>bad.png", b""), ("bad.cls", b"1")), "hard link"),
    "lone link member": (lambda: _around(("->bad.png", b"")), "symbolic link"),
    "non-utf-8 member name": (lambda: _around(*_sample("bad\udcff")), "not UTF-8"),
    "duplicate key": (lambda: _around(*_sample("a001")), "duplicate sample key"),
    "member twice in a sample": (lambda: _around(*_sample("bad"), ("bad.png", PNG)), "appears twice"),
    "16-bit png": (lambda: _around(*_sample("bad", png=_png16())), None),
    "palette png": (lambda: _around(*_sample("bad", png=_palette_png())), None),
    "pickle members": (lambda: _around(*_sample("bad", pickle=pickle.dumps(object), pyd=pickle.dumps(1))), None),
    "empty shard listed as empty": (lambda: ([(_tar([]), 0), (_tar(_good("c", 7)), 7)], 7, _keys("c", 7)), None),
    "empty shard listed with samples": (
        lambda: ([(_tar([]), 3), (_tar(_good("c", 7)), 7)], 10, _keys("c", 7)),
        "holds 0 samples",
    ),
    # a shard that disagrees with its record is not trusted: skipped whole (its samples are not "good")
    "shard shorter than listed": (
        lambda: ([(_tar(_good("a", 4)), 6), (_tar(_good("c", 7)), 7)], 13, _keys("c", 7)),
        "holds 4 samples, ",
    ),
    "zero block inside a sample": (_zero_block_inside_a_sample, "tar fault: a zero (end-of-archive) block splits"),
    "escape sequence in a member name": (lambda: _around(*_sample("bad\x1b[2J\x1b[31m")), "control characters"),
    "newline in a member name": (lambda: _around(*_sample("bad\nINFO all good")), "control characters"),
    "shard longer than listed": (
        lambda: ([(_tar(_good("a", 6)), 4), (_tar(_good("c", 7)), 7)], 11, _keys("c", 7)),
        "holds 6 samples, ",
    ),
}


@pytest.mark.parametrize("kind", sorted(SHARD_CASES))
def test_loader_handles_or_reports_every_kind_of_bad_shard_content(tmp_path, kind):
    build, message = SHARD_CASES[kind]
    shards, total, good = build()
    root = _dataset(tmp_path, shards)
    if message is None:
        with MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=True) as loader:
            batches = list(loader)
        keys = {k for batch in batches for k in batch["key"]}
        assert keys - {"bad"} == good and loader.counters.get("skipped", 0) == 0
        if "bad" in keys:
            image = next(b["image"][b["key"].index("bad")] for b in batches if "bad" in b["key"])
            assert image.dtype == torch.float32 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
            if kind == "16-bit png":  # 16-bit values keep their precision: 1000/65535 is not rounded to 8 bits
                assert abs(float(image[0, 0, 1]) - 1000 / 65535) < 1e-6
        return
    with (
        MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=True) as loader,
        pytest.raises(LoaderDataError) as info,
    ):
        list(loader)
    assert message in str(info.value), str(info.value)
    assert "train-00000" in str(info.value), "the error names the shard"
    assert str(info.value).isprintable(), "no control character of the shard reaches a message"
    with MedDiffuseLoader(str(root), 4, shuffle=False, as_dict=True, on_error="skip") as loader:
        batches = list(loader)
        counters = dict(loader.counters)
        planned = len(loader)
    assert len(batches) == planned, "a skip never changes the number of batches"
    assert counters["yielded"] + counters["skipped"] == total, counters
    yielded = {k for batch in batches for k in batch["key"]}
    assert yielded == good and counters["yielded"] == len(good), "every good sample is yielded, none lost"


# --- the converter --------------------------------------------------------------------------------------------


def _write_dicom(path: Path, name: str, **changes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    small_dicom(name, **changes).save_as(path)


def test_converter_handles_or_rejects_every_kind_of_bad_file(tmp_path):
    import pydicom

    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for label in ("normal", "abnormal"):
        for i in range(4):
            write_image(src / label / f"good{i}.png", rng.integers(0, 255, (12, 12), dtype=np.uint8))
    bad = src / "abnormal"
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (bad / "empty.png").write_bytes(b"")
    (bad / "bomb.png").write_bytes(_png_bomb())
    (bad / "wide16.png").write_bytes(_png16())
    (bad / "palette.png").write_bytes(_palette_png())
    write_image(bad / "caf\udce9.png", rng.integers(0, 255, (12, 12), dtype=np.uint8))  # a Latin-1 file name
    _write_dicom(bad / "jpegls.dcm", "MR_small_jpeg_ls_lossless.dcm")  # JPEG-LS: the dicom extra's codecs read it
    _write_dicom(bad / "mono1.dcm", "RG1_UNCR.dcm", size=32)
    _write_dicom(bad / "multiframe.dcm", "emri_small.dcm")  # its middle frame (--frames middle)
    _write_dicom(bad / "zero_window.dcm", "MR_small.dcm", WindowCenter=0, WindowWidth=0)  # an MR export habit
    _write_dicom(bad / "jpeg12.dcm", "JPGExtended.dcm")  # 12-bit JPEG: no permissively licensed codec
    (bad / "deep48.png").write_bytes(encode_png(rng.integers(0, 65535, (12, 12, 3)).astype(np.uint16)))
    os.mkfifo(bad / "fifo.png")  # opened, it would block the conversion forever
    nopixels = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del nopixels.PixelData
    nopixels.save_as(bad / "nopixels.dcm")
    (bad / "truncated.dcm").write_bytes((bad / "mono1.dcm").read_bytes()[:400])
    summary = convert_dataset(
        ImageFolderSource(),
        str(src),
        str(tmp_path / "out"),
        ConvertOptions(splits={"train": 1.0}, resize=12, channels=1),
        progress=False,
    )
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    rejects = {
        Path(json.loads(line)["path"]).name: json.loads(line)["reason"]
        for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    }
    expected = {
        "corrupt.png": "not a readable image",
        "corrupt.jpg": "not a readable image",
        "empty.png": "zero-byte",
        "bomb.png": "decompression bomb",
        "jpeg12.dcm": "12-bit JPEG needs pylibjpeg-libjpeg",
        "nopixels.dcm": "without pixel data",
        "truncated.dcm": "",
        "fifo.png": "a FIFO (named pipe), not a regular file: not read",
    }
    assert set(rejects) == set(expected), rejects
    for name, reason in expected.items():
        assert reason in rejects[name], (name, rejects[name])
    assert summary.converted + summary.rejected == summary.found == 8 + 16
    # wide16, palette, café, mono1, jpegls, multiframe, zero_window, deep48
    assert summary.converted == dataset["splits"]["train"]["samples"] == 8 + 8
    assert summary.notes["DICOM window ignored (width 0 < 1): stored range kept"] == 1
    with MedDiffuseLoader(str(tmp_path / "out"), 4, shuffle=False, as_dict=True) as loader:
        keys = [k for batch in loader for k in batch["key"]]
    assert len(set(keys)) == summary.converted
