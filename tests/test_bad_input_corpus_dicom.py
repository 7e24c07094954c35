"""Bad-input corpus, DICOM: every numeric field the converter uses is checked where it is read (a non-finite or
impossible rescale is a reject naming the element, never a flat image), an Enhanced multi-frame file's functional
groups give each frame its rescale and window, and every reject names the element and what to do."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset
from meddiffuse_stream.convert.base import RejectError
from meddiffuse_stream.convert.dicom import dicom_from_bytes

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::UserWarning")]


def _read(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ct(**changes: object) -> Dataset:
    ds = _read("CT_small.dcm")
    for name, value in changes.items():
        setattr(ds, name, value)
    return ds


def _empty_lut(sequence: str, **extra: object) -> Callable[[], Dataset]:
    def build() -> Dataset:
        ds = _ct(WindowCenter=40, WindowWidth=400)
        item = Dataset()
        item.add_new(0x00283002, "US", None)  # LUTDescriptor present, empty
        item.add_new(0x00283006, "OW", b"")
        for name, value in extra.items():
            setattr(item, name, value)
        setattr(ds, sequence, Sequence([item]))
        return ds

    return build


def _float_pixels() -> Dataset:
    ds = _ct()
    ds.add_new(0x7FE00008, "OF", np.zeros(128 * 128, np.float32).tobytes())  # FloatPixelData: a parametric map
    del ds.PixelData
    return ds


def _palette_without_descriptor() -> Dataset:
    ds = _read("OBXXXX1A.dcm")
    ds.RedPaletteColorLookupTableDescriptor = None
    return ds


def _frames_missing() -> Dataset:
    ds = _read("emri_small.dcm")
    ds.NumberOfFrames = 20  # the file holds 10
    return ds


def _cut_before_pixels() -> Dataset:
    ds = _ct()
    del ds.PixelData
    return ds


# shape -> (builder, words the reject must hold)
REJECTS: dict[str, tuple[Callable[[], Dataset], tuple[str, ...]]] = {
    "rescale slope nan, no window": (lambda: _ct(RescaleSlope="NaN"), ("RescaleSlope", "nan")),
    "rescale slope nan, window": (lambda: _ct(RescaleSlope="NaN", WindowCenter=40, WindowWidth=400), ("nan",)),
    "rescale slope inf": (lambda: _ct(RescaleSlope="inf", WindowCenter=40, WindowWidth=400), ("RescaleSlope", "inf")),
    "rescale slope -inf, no window": (lambda: _ct(RescaleSlope="-inf"), ("RescaleSlope",)),
    "rescale slope zero": (lambda: _ct(RescaleSlope=0, WindowCenter=40, WindowWidth=400), ("RescaleSlope", "0")),
    "rescale slope that overflows": (
        lambda: _ct(RescaleSlope="1e308", WindowCenter=40, WindowWidth=400),
        ("RescaleSlope", "not finite"),
    ),
    "rescale intercept nan": (lambda: _ct(RescaleIntercept="NaN"), ("RescaleIntercept", "nan")),
    "rescale slope empty": (lambda: _ct(RescaleSlope=None, WindowCenter=40, WindowWidth=400), ("RescaleSlope",)),
    "empty modality lut": (
        _empty_lut("ModalityLUTSequence", ModalityLUTType="HU"),
        ("ModalityLUTSequence", "--no-window"),
    ),
    "palette without descriptor": (_palette_without_descriptor, ("RedPaletteColorLookupTableDescriptor",)),
    "float pixel data": (_float_pixels, ("FloatPixelData", "integer PixelData")),
    "frames missing": (_frames_missing, ("NumberOfFrames 20", "frames are missing")),
    "rows empty": (lambda: _ct(Rows=None), ("Rows",)),
    "image cut before its pixels": (_cut_before_pixels, ("CT Image Storage", "cut short")),
}


@pytest.mark.parametrize("shape", sorted(REJECTS))
def test_every_unusable_dicom_is_a_reject_naming_the_element(shape):
    build, words = REJECTS[shape]
    with pytest.raises(RejectError) as info:
        dicom_from_bytes(_bytes(build()))
    message = str(info.value)
    assert "\n" not in message and "damaged DICOM (TypeError" not in message, message
    for word in words:
        assert word in message, (shape, message)


# shape -> (builder, the note counted)
WINDOWS_IGNORED: dict[str, tuple[Callable[[], Dataset], str]] = {
    "empty voi lut, window beside it": (_empty_lut("VOILUTSequence"), "VOI LUT ignored"),
    "window wider than any value": (lambda: _ct(WindowCenter=0, WindowWidth=1e300), "one grey level"),
    "window far above every value": (lambda: _ct(WindowCenter=1e9, WindowWidth=10), "one grey level"),
}


@pytest.mark.parametrize("shape", sorted(WINDOWS_IGNORED))
def test_a_window_that_cannot_show_the_image_is_ignored_and_counted_never_a_flat_image(shape):
    build, note = WINDOWS_IGNORED[shape]
    loaded = dicom_from_bytes(_bytes(build()))
    assert loaded.image.min() < loaded.image.max(), "the image is not flat"
    assert any(note in n for n in loaded.notes), loaded.notes
    if shape.startswith("empty voi lut"):  # the window next to the broken table is the one a viewer uses
        assert loaded.meta["window"][:2] == [40.0, 400.0]


def _linear_window(stored: np.ndarray, slope: float, intercept: float, centre: float, width: float) -> np.ndarray:
    """What a viewer shows, 0..1: the rescale, then the LINEAR window of DICOM PS3.3 C.11.2.1.2.1."""
    x = stored.astype(np.float64) * slope + intercept
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, (x - (centre - 0.5)) / (width - 1) + 0.5))


def _group(slope: float, intercept: float, centre: float, width: float) -> Dataset:
    item = Dataset()
    transform, voi = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "US"
    voi.WindowCenter, voi.WindowWidth = centre, width
    item.PixelValueTransformationSequence = Sequence([transform])
    item.FrameVOILUTSequence = Sequence([voi])
    return item


def test_enhanced_multiframe_per_frame_groups_give_each_frame_its_rescale_and_window():
    ds = _read("emri_small.dcm")  # Enhanced MR, 10 frames of 12 bits
    settings = [(1.0 + i / 4, -50.0 * i, 600.0 + 40 * i, 900.0 - 30 * i) for i in range(10)]
    ds.PerFrameFunctionalGroupsSequence = Sequence([_group(*s) for s in settings])
    ds.SharedFunctionalGroupsSequence = Sequence([_group(1.0, 0.0, 5.0, 3.0)])  # per-frame wins over shared
    stored = ds.pixel_array
    loaded = dicom_from_bytes(_bytes(ds), frames="all")
    assert loaded.meta["functional_groups"] == "per-frame"
    assert loaded.frames is not None and len(loaded.frames) == 10
    for index in (0, 4, 9):
        slope, intercept, centre, width = settings[index]
        expected = _linear_window(stored[index], slope, intercept, centre, width)
        assert 0 < expected.mean() < 1, "the test's window shows the frame"
        got = loaded.frames[index].astype(np.float64) / 65535
        assert np.abs(got - expected).max() < 1e-4, index
    middle = dicom_from_bytes(_bytes(ds))
    assert middle.meta["window"][:2] == [settings[4][2], settings[4][3]]
    assert middle.meta["rescale"] == [settings[4][0], settings[4][1]]
    assert any("functional groups" in note for note in middle.notes)


def test_enhanced_ct_shared_groups_are_applied_and_recorded():
    ds = _read("eCT_Supplemental.dcm")  # shared FrameVOILUTSequence (49/102) and rescale (1/-1024)
    loaded = dicom_from_bytes(_bytes(ds))
    assert loaded.meta["functional_groups"] == "shared"
    assert loaded.meta["window"][:2] == [49.0, 102.0] and loaded.meta["rescale"] == [1.0, -1024.0]
    assert loaded.meta["window_applied"] is True
    frame = ds.pixel_array[loaded.meta["frame_index"]]
    hu = frame.astype(np.float64) - 1024
    dark, bright = hu < 49 - 51, hu > 49 + 51
    assert (loaded.image[dark] == 0).all() and (loaded.image[bright] == 65535).all()


def test_the_converter_lists_each_unusable_dicom_with_its_reason(tmp_path):
    src = tmp_path / "src"
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
        (src / label / "good.dcm").write_bytes(_bytes(_ct()))
    for shape, (build, _) in REJECTS.items():
        (src / "b" / f"{shape.replace(' ', '_').replace(',', '')}.dcm").write_bytes(_bytes(build()))
    summary = convert_dataset(
        ImageFolderSource(), str(src), str(tmp_path / "out"), ConvertOptions(splits={"train": 1.0}), progress=False
    )
    assert summary.found == 2 + len(REJECTS) and summary.converted == 2 and summary.rejected == len(REJECTS)
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert all("damaged DICOM (TypeError" not in row["reason"] for row in rows), rows
    assert {Path(row["path"]).stem for row in rows} == {s.replace(" ", "_").replace(",", "") for s in REJECTS}
