import json

import numpy as np
import pytest
from readback import check_accounting, load_dataset, pixels

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.jobs.demo_data import render_sample


def test_same_seed_same_pixels_another_seed_others():
    first = render_sample(seed=1, index=5, size=32, modality="ct", label=1)
    again = render_sample(seed=1, index=5, size=32, modality="ct", label=1)
    other = render_sample(seed=2, index=5, size=32, modality="ct", label=1)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.roi, again.roi)
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("modality", ["cr_chest", "cr_extremity", "ct", "mr"])
def test_lesion_changes_exactly_the_masked_region(modality):
    with_lesion = render_sample(seed=0, index=3, size=48, modality=modality, label=1)
    without = render_sample(seed=0, index=3, size=48, modality=modality, label=0)
    assert without.roi.sum() == 0 and with_lesion.roi.sum() > 20
    inside = with_lesion.roi.astype(bool)
    # same background draw up to the lesion: the change concentrates inside the mask
    change = np.abs(with_lesion.image.astype(int) - without.image.astype(int))
    assert change[inside].mean() > 3 * max(change[~inside].mean(), 0.5)


def test_domain_shift_split_puts_one_modality_in_test(tmp_path):
    source = DemoSource(n=120, size=32, seed=0, test_modality="mr")
    summary = convert_dataset(source, None, str(tmp_path / "demo"), ConvertOptions(shard_size=30), progress=False)
    dataset = load_dataset(tmp_path / "demo")
    check_accounting(dataset)
    modality_of = {row["key"]: (row["split"], row["modality"]) for row in dataset["index"]}
    assert {m for s, m in modality_of.values() if s == "test"} == {"mr"}
    assert "mr" not in {m for s, m in modality_of.values() if s != "test"}
    assert summary.converted == 120 and dataset["info"]["has_roi"]
    for sample in dataset["samples"].values():
        roi = pixels(sample["roi.png"])
        assert (roi.any()) == (int(sample["cls"]) == 1)
        assert json.loads(sample["json"])["modality"] in {"cr_chest", "cr_extremity", "ct", "mr"}


def test_bad_demo_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown modality"):
        convert_dataset(DemoSource(test_modality="pet"), None, str(tmp_path / "x"), progress=False)


def test_the_shortcut_phantom_splits_by_scan_and_reverses_its_cue_in_test(tmp_path):
    source = DemoSource(n=240, size=32, seed=0, shortcut=0.9)
    convert_dataset(source, None, str(tmp_path / "demo"), ConvertOptions(shard_size=60), progress=False)
    dataset = load_dataset(tmp_path / "demo")
    check_accounting(dataset)
    scans: dict[str, set[str]] = {}
    for row in dataset["index"]:
        scans.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in scans.values()), "no scan is in two splits"
    assert {s for (s,) in scans.values()} == {"train", "val", "test"} and len(scans) >= 12
    share = {}
    for key, sample in dataset["samples"].items():
        meta = json.loads(sample["json"])
        split = next(row["split"] for row in dataset["index"] if row["key"] == key)
        entry = share.setdefault((split == "test", int(sample["cls"])), [0, 0])
        entry[0] += meta["cue"]
        entry[1] += 1
    rate = {k: hits / total for k, (hits, total) in share.items()}
    assert rate[(False, 1)] > 0.75 and rate[(False, 0)] < 0.25, "train/val: the cue goes with the lesion"
    assert rate[(True, 1)] < 0.35 and rate[(True, 0)] > 0.65, "test: the other way round"


def test_the_cue_is_a_faint_grating_and_the_rest_of_the_sample_is_the_same():
    from meddiffuse_stream.jobs.demo_data import render_shortcut_sample
    from meddiffuse_stream.jobs.demo_shortcut import CUE_AMPLITUDE, CUE_PERIOD

    args = (3, 7, 48, "CT_small.dcm", 1)
    with_cue = render_shortcut_sample(*args, True, {}).image.astype(float)
    without = render_shortcut_sample(*args, False, {}).image.astype(float)
    difference = (with_cue - without).mean(axis=1)  # the grating varies along rows only
    spectrum = np.abs(np.fft.rfft(difference - difference.mean()))
    assert spectrum.argmax() == 48 // CUE_PERIOD
    assert np.abs(with_cue - without).max() <= 255 * CUE_AMPLITUDE + 1


def test_shortcut_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--shortcut must be in"):
        convert_dataset(DemoSource(shortcut=0.3), None, str(tmp_path / "x"), progress=False)
    with pytest.raises(ValueError, match="splits by scan"):
        convert_dataset(DemoSource(shortcut=0.9, test_modality="mr"), None, str(tmp_path / "y"), progress=False)
