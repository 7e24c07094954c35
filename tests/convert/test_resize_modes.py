"""``shard --resize N --resize-mode``: the loader's geometry at conversion time — crop (the default: cover and cut
the centre, nothing distorted), letterbox (fit and pad with zeros) or stretch (the earlier behaviour) — with ROI
masks following their image, and the choice recorded in dataset.json."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from builders import write_image
from readback import load_dataset, pixels

from meddiffuse_stream.cli import main
from meddiffuse_stream.convert import ConvertOptions, ImageFolderSource, convert_dataset
from meddiffuse_stream.convert.base import DEFAULT_RULES, Discovery, LoadedImage, ReadRules, SourceFormat, SourceItem
from meddiffuse_stream.nodes.conform import resize_image
from meddiffuse_stream.storage import Location


def _roi() -> np.ndarray:
    roi = np.zeros((20, 40), np.uint8)
    roi[:, 30:] = 1
    return roi


def _wide() -> np.ndarray:
    """40 wide, 20 high: a bright 10-pixel band at each side, grey in the middle."""
    image = np.full((20, 40), 100, np.uint8)
    image[:, :10] = image[:, 30:] = 250
    return image


@dataclass(frozen=True)
class _WideWithRoi(SourceFormat):
    """Two wide images whose ROI is their right band: what a box-annotated source (RSNA) gives."""

    name = "wide"

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        items = [SourceItem(f"w{i}", i, f"w{i}.png", None, patient_id=f"p{i}") for i in range(2)]
        return Discovery(["a", "b"], items, [], has_roi=True)

    def load_one(self, src: Location, item: SourceItem, rules: ReadRules = DEFAULT_RULES) -> LoadedImage:
        return LoadedImage(_wide(), _roi())


def _convert(tmp_path, name: str, **options) -> dict:
    out = tmp_path / name
    convert_dataset(
        _WideWithRoi(), str(tmp_path), str(out), ConvertOptions(splits={"train": 1.0}, **options), progress=False
    )
    return load_dataset(out)


@pytest.mark.parametrize(
    ("mode", "bright_columns", "zero_rows"), [("crop", 0, 0), ("letterbox", 10, 10), ("stretch", 10, 0)]
)
def test_each_mode_has_the_loaders_geometry_and_the_roi_follows(tmp_path, mode, bright_columns, zero_rows):
    dataset = _convert(tmp_path, mode, resize=20, resize_mode=mode)
    assert dataset["info"]["options"]["resize"] == 20 and dataset["info"]["options"]["resize_mode"] == mode
    sample = dataset["samples"]["w0"]
    image, stored = pixels(sample["png"]), pixels(sample["roi.png"])
    roi = stored > 0
    assert np.array_equal(image, resize_image(_wide()[None], (20, 20), mode)[0]), "the loader's resize, exactly"
    assert np.array_equal(roi, resize_image(_roi()[None], (20, 20), mode, mask=True)[0] > 0), "the same geometry"
    # crop keeps the centre (the bands are cut), letterbox keeps everything and pads, stretch squeezes the width
    assert int((image[10] > 200).sum()) == pytest.approx(bright_columns, abs=1)
    assert int((image == 0).all(axis=1).sum()) == zero_rows
    assert set(np.unique(stored)) <= {0, 255}, "masks stay binary"
    if mode == "crop":
        assert not roi.any(), "the right band was cut, and its ROI with it"
    else:  # the ROI (the right band) lands on the image's right band, wherever the mode put it
        assert roi[10, -4:].all() and not roi[:, :14].any() and (image[roi] > 200).mean() > 0.8


def test_the_default_crops_instead_of_stretching_and_a_new_mode_rebuilds(tmp_path):
    src = tmp_path / "in"
    for index in range(4):
        write_image(src / ("a" if index % 2 else "b") / f"p{index}" / "img.png", _wide())
    out = tmp_path / "out"
    assert main(["shard", "imagefolder", str(src), str(out), "--resize", "16", "--split", "train=1", "--quiet"]) == 0
    dataset = load_dataset(out)
    assert dataset["info"]["options"]["resize_mode"] == "crop"
    images = [pixels(s["png"]) for s in dataset["samples"].values()]
    assert all((image != 0).all() and not (image[8] > 200).any() for image in images), "cropped: no padding, no band"
    stretch = ConvertOptions(splits={"train": 1.0}, resize=16, resize_mode="stretch")
    summary = convert_dataset(ImageFolderSource(), str(src), str(out), stretch, progress=False)
    assert summary.shards == 1 and summary.reused_shards == 0, "another geometry: the shard is rebuilt"
    assert load_dataset(out)["info"]["options"]["resize_mode"] == "stretch"
    summary = convert_dataset(ImageFolderSource(), str(src), str(out), stretch, progress=False)
    assert summary.reused_shards == summary.shards == 1, "the same geometry: nothing rebuilt"


def test_without_resize_nothing_is_recorded_and_a_bad_mode_is_named(tmp_path, capsys):
    """No resize: no mode recorded (nothing was resized); a mode that does not exist is named."""
    dataset = _convert(tmp_path, "plain")
    assert dataset["info"]["options"]["resize"] is None and dataset["info"]["options"]["resize_mode"] is None
    with pytest.raises(ValueError, match="--resize-mode must be one of crop, letterbox, stretch, got 'squash'"):
        convert_dataset(
            _WideWithRoi(), str(tmp_path), str(tmp_path / "x"), ConvertOptions(resize=16, resize_mode="squash")
        )
    with pytest.raises(SystemExit):
        main(["shard", "imagefolder", str(tmp_path), str(tmp_path / "y"), "--resize-mode", "squash"])
    assert "invalid choice: 'squash'" in capsys.readouterr().err
