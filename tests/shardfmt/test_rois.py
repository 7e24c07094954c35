"""Per-finding ROIs as one bit mask (``rois.png``): packed and unpacked exactly, written only for multi-label
samples beside their union (``roi.png``), decoded into ``(C, H, W)`` 0/1, and refused — naming the sample — when
their bits or size do not fit the dataset."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddiffuse_stream.nodes.decode import DecodeOptions, SampleError, decode_sample
from meddiffuse_stream.options import LabelOptions
from meddiffuse_stream.shardfmt import decode_png, encode_png, encode_sample
from meddiffuse_stream.shardfmt.rois import pack_finding_rois, unpack_finding_rois
from meddiffuse_stream.shardfmt.tar import RawSample


@settings(max_examples=50, deadline=None)
@given(findings=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_pack_and_unpack_are_exact_for_any_overlap(findings, seed):
    masks = np.random.default_rng(seed).random((findings, 7, 5)) < 0.4
    bits = pack_finding_rois(masks)
    assert bits.dtype == np.uint8 and np.array_equal(decode_png(encode_png(bits)), bits)
    assert np.array_equal(unpack_finding_rois(bits, findings, "k.rois.png"), masks.astype(np.uint8))


def test_unpack_refuses_what_the_dataset_cannot_hold():
    bits = np.array([[0, 4]], dtype=np.uint8)  # finding 2 set
    with pytest.raises(ValueError, match=r"k\.rois\.png: bits above the dataset's 2 findings are set"):
        unpack_finding_rois(bits, 2, "k.rois.png")
    with pytest.raises(ValueError, match=r"hold 1\.\.8 findings, the dataset has 9"):
        unpack_finding_rois(bits, 9, "k.rois.png")
    with pytest.raises(ValueError, match=r"1\.\.8 masks"):
        pack_finding_rois(np.zeros((9, 2, 2)))


def _members(sample):
    return {name.split(".", 1)[1]: data for name, data in sample.members}


def test_the_writer_puts_the_union_beside_the_bits_and_refuses_what_does_not_fit():
    image = np.zeros((4, 6), dtype=np.uint8)
    masks = np.zeros((3, 4, 6), dtype=bool)
    masks[0, 1, 1] = masks[2, 1, 1] = masks[1, 3, 5] = True
    sample = encode_sample("k", image, None, {}, findings=(1, 1, 1), rois=pack_finding_rois(masks))
    members = _members(sample)
    assert np.array_equal(decode_png(members["rois.png"]), pack_finding_rois(masks))
    assert np.array_equal(decode_png(members["roi.png"]) > 0, masks.any(axis=0))
    bits = pack_finding_rois(masks)
    with pytest.raises(ValueError, match=r"per-finding ROIs are an .* multi-label sample"):
        encode_sample("k", image, 1, {}, rois=bits)
    with pytest.raises(ValueError, match="ROI bits above its 2 findings"):
        encode_sample("k", image, None, {}, findings=(1, 1), rois=bits)
    with pytest.raises(ValueError, match="the ROI must be the union"):
        encode_sample("k", image, None, {}, np.zeros((4, 6), np.uint8), findings=(1, 1, 1), rois=bits)


def _options(findings=3):
    names = tuple(f"f{k}" for k in range(findings))
    return DecodeOptions(with_roi=True, class_names=names, labels=LabelOptions("findings"))


def test_the_decoder_unpacks_the_bits_and_names_a_bad_member():
    image = np.zeros((4, 6), dtype=np.uint8)
    masks = np.random.default_rng(0).random((3, 4, 6)) < 0.5
    sample = encode_sample("k", image, None, {}, findings=(1, 1, 1), rois=pack_finding_rois(masks))
    decoded = decode_sample(RawSample("k", _members(sample)), _options())
    assert decoded["rois"].shape == (3, 4, 6) and np.array_equal(decoded["rois"], masks.astype(np.uint8))
    assert np.array_equal(decoded["roi"][0], masks.any(axis=0).astype(np.uint8))
    with pytest.raises(SampleError, match=r"k\.rois\.png: bits above the dataset's 2 findings"):
        members = _members(encode_sample("k", image, None, {}, findings=(1, 1, 1), rois=pack_finding_rois(masks)))
        members["labels.json"] = b"[1,1]"
        decode_sample(RawSample("k", members), _options(2))
    members = _members(sample)
    members["rois.png"] = encode_png(np.zeros((2, 2), np.uint8))
    with pytest.raises(SampleError, match=r"k\.rois\.png: mask \(1, 2, 2\) does not match image"):
        decode_sample(RawSample("k", members), _options())
    without = decode_sample(
        RawSample("k", _members(sample)), DecodeOptions(class_names=("f0", "f1", "f2"), labels=LabelOptions("findings"))
    )
    assert "rois" not in without, "masks are decoded only when asked for (as_dict loaders)"
