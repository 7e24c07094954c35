"""Property tests (hypothesis, bounded and derandomised so a run is repeatable) over what reads untrusted bytes and
names: the tar reader, the loader's and the converter's decoders, and the BreakHis and MURA name parsers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddiffuse_stream.convert.base import LoadedImage, RejectError
from meddiffuse_stream.convert.breakhis import SUBTYPES, parse_breakhis_name
from meddiffuse_stream.convert.dicom import dicom_from_bytes
from meddiffuse_stream.convert.images import image_from_bytes
from meddiffuse_stream.convert.mura import parse_mura_path
from meddiffuse_stream.nodes.decode import DecodeOptions, SampleError, decode_sample
from meddiffuse_stream.shardfmt import EncodedSample, ShardWriter, encode_png
from meddiffuse_stream.shardfmt.tar import RawSample, TarProblem, iter_samples

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# noise to splice into names: arbitrary text, and the characters that slip past careless patterns
NOISE = st.one_of(st.sampled_from(["\n", " ", "\t", "\r\n", "/", "..", "\x00", "\u0663", "-", "_", ".png"]),
                  st.text(max_size=6))  # fmt: skip
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


PARTS = st.fixed_dictionaries({
    "subtype": st.sampled_from(sorted(SUBTYPES)),
    "year": st.integers(0, 99),
    "slide": st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=8),
    "magnification": st.sampled_from([40, 100, 200, 400]),
    "sequence": st.integers(0, 999),
})  # fmt: skip


@FUZZ
@given(PARTS)
def test_breakhis_names_round_trip(parts):
    kind = "B" if parts["subtype"] in ("A", "F", "PT", "TA") else "M"
    name = (f"SOB_{kind}_{parts['subtype']}-{parts['year']:02d}-{parts['slide']}-{parts['magnification']}-"
            f"{parts['sequence']:03d}.png")  # fmt: skip
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
            rebuilt = (f"SOB_{'M' if parsed['malignant'] else 'B'}_"
                       f"{next(k for k, v in SUBTYPES.items() if v == parsed['subtype'])}-{parsed['patient_id']}-"
                       f"{parsed['magnification']}-{parsed['sequence']:03d}.png")  # fmt: skip
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
