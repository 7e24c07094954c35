"""Property tests (hypothesis, bounded and derandomised so a run is repeatable) over what reads untrusted bytes and
names: the tar reader (also on hand-made PAX records, GNU headers and size fields), JSON members and dataset.json
(nested to any depth), the loader's and the converter's decoders, and the BreakHis and MURA name parsers. Examples
that read hostile bytes run under a time limit, so a reader that loops fails instead of hanging the suite."""

from __future__ import annotations

import contextlib
import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tar_bytes import END, gnu_long_name, header, member, padded, pax, pax_record

from meddiffuse_stream.convert.base import LoadedImage, RejectError
from meddiffuse_stream.convert.breakhis import SUBTYPES, parse_breakhis_name
from meddiffuse_stream.convert.dicom import dicom_from_bytes
from meddiffuse_stream.convert.images import image_from_bytes
from meddiffuse_stream.convert.mura import parse_mura_path
from meddiffuse_stream.nodes.decode import DecodeOptions, SampleError, decode_sample
from meddiffuse_stream.shardfmt import EncodedSample, ManifestError, ShardWriter, encode_png, parse_manifest
from meddiffuse_stream.shardfmt.tar import RawSample, TarProblem, count_samples, iter_samples

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# noise to splice into names: arbitrary text, and the characters that slip past careless patterns
NOISE = st.one_of(
    st.sampled_from(["\n", " ", "\t", "\r\n", "/", "..", "\x00", "\u0663", "-", "_", ".png"]), st.text(max_size=6)
)
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)
SUFFIXES = st.sampled_from(["png", "cls", "json", "roi.png", "txt", "pyd"])


def _shard(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    for key, members in samples:
        writer.add(EncodedSample(key, tuple((f"{key}.{s}", d) for s, d in members.items()), 0))
    writer.close()
    return buffer.getvalue()


SAMPLES = st.lists(
    st.tuples(KEYS, st.dictionaries(SUFFIXES, st.binary(max_size=1500), min_size=1, max_size=4)),
    max_size=6,
    unique_by=lambda sample: sample[0],
)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail the example if it runs longer than ``seconds`` (a hang would otherwise never return)."""

    def expired(signum, frame):
        raise TimeoutError(f"an example ran longer than {seconds}s: the reader does not terminate")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _length_field(data: st.DataObject, true_length: int) -> bytes:
    """A PAX record length: right, off by a little, zero, negative, huge or not a number at all."""
    return data.draw(
        st.one_of(
            st.just(str(true_length)),
            st.integers(-3, 3).map(lambda d: str(max(0, true_length + d))),
            st.sampled_from(["0", "-6", "-1", "1", "99999999999999999999", "٣", "0x10", "+7", ""]),
            st.integers(0, 10**6).map(str),
        )
    ).encode()


def _pax_block(data: st.DataObject) -> bytes:
    records = b""
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(st.sampled_from(["path", "size", "mtime", "linkpath", "x", ""]))
        value = data.draw(st.one_of(st.text(max_size=30), st.integers(-5, 10**6).map(str)))
        body = f" {name}={value}\n".encode("utf-8", "surrogatepass")
        true_length = len(pax_record(name, value)) if "\n" not in value else len(body) + 2
        records += _length_field(data, true_length) + body
    records += data.draw(st.binary(max_size=8))
    return pax(records)


def _size_field(data: st.DataObject) -> bytes:
    return data.draw(
        st.one_of(
            st.binary(min_size=12, max_size=12).map(lambda b: bytes([b[0] | 0x80]) + b[1:]),  # base-256, any sign
            st.sampled_from([b"-0000000001\0", b"77777777777\0", b"           ", b"0" * 12, b"\0" * 12]),
            st.binary(min_size=12, max_size=12),
        )
    )


BLOCK_KINDS = ["sample", "pax", "gnu_name", "gnu_link", "global", "size", "link", "dir", "garbage", "member"]


def _hostile_tar(data: st.DataObject) -> bytes:
    parts = []
    for index in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(BLOCK_KINDS))
        key = f"k{index}"
        if kind == "sample":
            parts.append(member(f"{key}.png", b"img") + member(f"{key}.cls", b"1"))
        elif kind == "pax":
            parts.append(_pax_block(data))
        elif kind in ("gnu_name", "gnu_link"):
            name = data.draw(st.text(min_size=0, max_size=300))
            size = data.draw(st.one_of(st.none(), st.integers(0, 1 << 21)))
            block = gnu_long_name(name, size)
            parts.append(block if kind == "gnu_name" else block[:156] + b"K" + block[157:])
        elif kind == "global":
            parts.append(header("g", 20, b"g") + padded(data.draw(st.binary(max_size=20))))
        elif kind == "size":
            parts.append(header(f"{key}.png", 0, size_field=_size_field(data)) + data.draw(st.binary(max_size=600)))
        elif kind == "link":
            parts.append(member(f"{key}.png", b"", kind=data.draw(st.sampled_from([b"1", b"2", b"3", b"6"]))))
        elif kind == "dir":
            parts.append(member(f"{key}/", b"", kind=b"5"))
        elif kind == "garbage":
            parts.append(data.draw(st.binary(min_size=512, max_size=512)))
        else:
            parts.append(member(f"{data.draw(KEYS)}.{data.draw(SUFFIXES)}", data.draw(st.binary(max_size=700))))
    shard = b"".join(parts) + END
    return shard[: data.draw(st.integers(0, len(shard)))] if data.draw(st.booleans()) else shard


@FUZZ
@given(st.data())
def test_tar_reader_ends_on_hostile_pax_gnu_and_size_headers(data):
    """Hand-made PAX records with every kind of wrong length, GNU long names and links of any claimed size, octal
    and base-256 size fields, links, garbage blocks and cuts: the reading ends in bounded time, yields only samples
    and problems (at most one fatal, last), and counting agrees with reading."""
    shard = _hostile_tar(data)
    with time_limit(5):
        items = list(iter_samples(io.BytesIO(shard), max_member_bytes=1 << 16))
        count, fatal = count_samples(io.BytesIO(shard), max_member_bytes=1 << 16)
    assert all(isinstance(item, (RawSample, TarProblem)) for item in items)
    assert not any(isinstance(item, TarProblem) and item.fatal for item in items[:-1]), "a fatal problem ends it"
    assert all(isinstance(item, RawSample) or item.reason for item in items)
    positions = len(items) - (1 if items and isinstance(items[-1], TarProblem) and items[-1].fatal else 0)
    assert count == positions and (fatal is not None) == (positions != len(items))


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"x": "' + b"[" * depth + b'"}'  # brackets inside a string do not nest


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)


@FUZZ
@given(st.integers(0, 200_000), st.sampled_from(["list", "object", "string"]), st.data())
def test_nested_json_members_decode_or_are_a_named_sample_error(depth, kind, data):
    """JSON nested to any depth (a 200 KB [[[[… once escaped on_error='skip' as a RecursionError), cut anywhere:
    the decoder returns the metadata or raises SampleError naming the key, never anything else, in bounded time."""
    text = _nested(depth, kind)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]
    png = encode_png(np.zeros((2, 2), np.uint8))
    with time_limit(5):
        for candidate in (text, json.dumps(data.draw(JSON_VALUES)).encode()):
            try:
                sample = decode_sample(
                    RawSample("key", {"png": png, "cls": b"0", "json": candidate}),
                    DecodeOptions(with_meta=True, max_json_bytes=1 << 20),
                )
            except SampleError as error:
                assert str(error).startswith("key.json: ") and error.kind in (
                    "bad json",
                    "json too deep",
                    "json too large",
                    "json not an object",
                )
            else:
                assert isinstance(sample["meta"], dict)


@FUZZ
@given(st.integers(0, 100_000), st.sampled_from(["list", "object"]), JSON_VALUES, st.data())
def test_dataset_json_of_any_shape_is_valid_or_a_manifest_error(depth, kind, junk, data):
    shard = {"path": "train/a.tar", "split": "train", "samples": 1, "bytes": 1024}
    document = data.draw(
        st.sampled_from(
            [
                {"format_version": 1, "shards": [shard], "extra": junk},
                {"format_version": 1, "shards": junk},
                {"format_version": junk, "shards": [shard]},
                {"format_version": 1, "shards": [{**shard, "samples": junk}]},
                {"format_version": 1, "shards": [{**shard, "path": junk}]},
                {"format_version": 1, "shards": [shard], "splits": junk, "class_names": junk},
            ]
        )
    )
    for text in (json.dumps(document).encode(), _nested(depth, kind)):
        with time_limit(5):
            try:
                manifest = parse_manifest(text, "ds/dataset.json")
            except ManifestError as error:
                assert str(error).startswith("ds/dataset.json: ")
            else:
                assert all(s.samples >= 0 and not s.path.startswith("/") for s in manifest.shards)


@FUZZ
@given(SAMPLES)
def test_tar_reader_returns_exactly_what_was_written(samples):
    read = list(iter_samples(io.BytesIO(_shard(samples))))
    assert [(s.key, s.members) for s in read] == [(k, m) for k, m in samples]


@FUZZ
@given(SAMPLES, st.data())
def test_tar_reader_never_raises_on_damaged_shards(samples, data):
    """Flipped bytes, cuts and garbage: only samples and problems come out, and the reading ends."""
    shard = bytearray(_shard(samples))
    for _ in range(data.draw(st.integers(0, 6))):
        if shard:
            shard[data.draw(st.integers(0, len(shard) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(shard)))
    damaged = bytes(shard[:cut]) + data.draw(st.binary(max_size=700))
    items = list(iter_samples(io.BytesIO(damaged), max_member_bytes=1 << 16))
    assert all(isinstance(item, (RawSample, TarProblem)) for item in items)
    assert sum(len(v) for item in items if isinstance(item, RawSample) for v in item.members.values()) <= len(damaged)
    assert sum(1 for item in items if isinstance(item, TarProblem) and item.fatal) <= 1
    assert not any(isinstance(item, TarProblem) and item.fatal for item in items[:-1]), "a fatal problem ends it"


IMAGES = st.one_of(
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([np.uint8, np.uint16]), st.just(0)),
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.just(np.uint8), st.just(3)),
)


@FUZZ
@given(IMAGES, st.integers(0, 2**32 - 1))
def test_decoded_images_round_trip_bit_exactly(shape, seed):
    height, width, dtype, channels = shape
    rng = np.random.default_rng(seed)
    size = (height, width, channels) if channels else (height, width)
    array = rng.integers(0, np.iinfo(dtype).max, size, dtype=dtype, endpoint=True)
    sample = decode_sample(RawSample("k", {"png": encode_png(array), "cls": b"0"}), DecodeOptions())
    expected = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    assert sample["image"].dtype == dtype and np.array_equal(sample["image"], expected)
    assert np.array_equal(image_from_bytes(encode_png(array)).image, array)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["png", "jpg", "cls", "json", "roi.png"]), st.binary(max_size=300), max_size=5),
    st.booleans(),
)
def test_loader_decoder_either_decodes_or_names_the_problem(members, with_extras):
    png = encode_png(np.zeros((4, 4), np.uint8))
    options = DecodeOptions(num_classes=2, with_roi=with_extras, with_meta=with_extras)
    for candidate in (members, {"png": png, **members}):
        try:
            sample = decode_sample(RawSample("key", candidate), options)
        except SampleError as error:
            assert "key" in str(error) and error.kind
        else:
            assert sample["label"] in (0, 1) and sample["image"].ndim == 3


@FUZZ
@given(st.binary(max_size=400), st.data())
def test_converter_image_decoder_rejects_or_decodes(garbage, data):
    real = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    mutated = bytearray(real)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    for candidate in (garbage, bytes(mutated), real[: data.draw(st.integers(0, len(real)))]):
        try:
            loaded = image_from_bytes(candidate)
        except RejectError as error:
            assert str(error)
        else:
            assert isinstance(loaded, LoadedImage) and loaded.image.dtype in (np.uint8, np.uint16)


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's warnings about the damage it reads around
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_dicom_decoder_rejects_or_decodes_damaged_files(dicom_bytes, data):
    """A real CT file with bytes flipped or cut: a clear reject or a correct 8/16-bit image, nothing else."""
    damaged = bytearray(dicom_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(128, len(damaged) - 1))  # after the preamble: the header and the pixels
        damaged[position] = data.draw(st.integers(0, 255))
    damaged = damaged[: data.draw(st.integers(132, len(damaged)))]
    try:
        loaded = dicom_from_bytes(bytes(damaged))
    except RejectError as error:
        assert str(error)
    else:
        assert loaded.image.dtype in (np.uint8, np.uint16) and loaded.image.ndim in (2, 3)


PARTS = st.fixed_dictionaries(
    {
        "subtype": st.sampled_from(sorted(SUBTYPES)),
        "year": st.integers(0, 99),
        "slide": st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=8),
        "magnification": st.sampled_from([40, 100, 200, 400]),
        "sequence": st.integers(0, 999),
    }
)


@FUZZ
@given(PARTS)
def test_breakhis_names_round_trip(parts):
    kind = "B" if parts["subtype"] in ("A", "F", "PT", "TA") else "M"
    name = (
        f"SOB_{kind}_{parts['subtype']}-{parts['year']:02d}-{parts['slide']}-{parts['magnification']}-"
        f"{parts['sequence']:03d}.png"
    )
    parsed = parse_breakhis_name(name)
    assert parsed["malignant"] == (kind == "M") and parsed["subtype"] == SUBTYPES[parts["subtype"]]
    assert parsed["patient_id"] == f"{parts['year']:02d}-{parts['slide']}"
    assert (parsed["magnification"], parsed["sequence"]) == (parts["magnification"], parts["sequence"])


@FUZZ
@given(NOISE, PARTS)
def test_breakhis_parser_accepts_only_whole_valid_names(noise, parts):
    kind = "B" if parts["subtype"] in ("A", "F", "PT", "TA") else "M"
    valid = f"SOB_{kind}_{parts['subtype']}-14-{parts['slide']}-{parts['magnification']}-001.png"
    for name in (noise, valid + noise, noise + valid, valid.replace("-", noise[:1] or "-", 1)):
        try:
            parsed = parse_breakhis_name(name)
        except ValueError as error:
            assert repr(name) in str(error)
        else:  # accepted: then it is exactly a valid name, nothing before or after
            rebuilt = (
                f"SOB_{'M' if parsed['malignant'] else 'B'}_"
                f"{next(k for k, v in SUBTYPES.items() if v == parsed['subtype'])}-{parsed['patient_id']}-"
                f"{parsed['magnification']}-{parsed['sequence']:03d}.png"
            )
            assert rebuilt == name


@FUZZ
@given(
    st.text(alphabet="abcXYZ-_./ 0123456789", max_size=20),
    st.sampled_from(["train", "valid"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=9),
    st.integers(0, 99999),
    st.integers(1, 9),
    st.sampled_from(["positive", "negative"]),
    st.text(alphabet="abcdefghij0123456789._-", min_size=1, max_size=12),
)
def test_mura_paths_round_trip(root, split, part, patient, study, tag, image):
    root = root.lstrip(" ")
    root = root if not root or root.endswith("/") else root + "/"
    path = f"{root}{split}/XR_{part}/patient{patient:05d}/study{study}_{tag}/{image}"
    parsed = parse_mura_path(path)
    assert parsed["split"] == {"train": "train", "valid": "val"}[split] and parsed["body_part"] == part.lower()
    assert parsed["patient_id"] == f"patient{patient:05d}" and parsed["image"] == image
    assert path.startswith(parsed["study_dir"]) and parsed["study_dir"].endswith(f"study{study}_{tag}/")


@FUZZ
@given(NOISE, st.integers(0, 60), st.sampled_from(["MURA-v1.1/", "", "data/MURA/"]))
def test_mura_parser_accepts_only_whole_valid_paths(noise, position, root):
    valid = f"{root}train/XR_WRIST/patient00012/study1_positive/image3.png"
    cut = min(position, len(valid))
    for path in (noise, valid + noise, noise + valid, valid[:cut] + noise + valid[cut:]):
        try:
            parsed = parse_mura_path(path)
        except ValueError as error:
            assert repr(path) in str(error)
        else:  # accepted: every part is in the path, and the image is the whole rest of it
            assert parsed["split"] in ("train", "val") and parsed["image"] and path == path.rstrip()
            assert path.startswith(parsed["study_dir"]) and path[len(parsed["study_dir"]) :] == parsed["image"]
            assert f"/XR_{parsed['body_part'].upper()}/{parsed['patient_id']}/{parsed['study']}_" in "/" + path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dicom_cut_anywhere_in_its_header_is_a_reject(dicom_bytes):
    """Every cut through the file meta and the first elements (where pydicom parses lazily) is a clean reject."""
    for cut in range(132, 1200, 3):
        with pytest.raises(RejectError):
            dicom_from_bytes(dicom_bytes[:cut])
