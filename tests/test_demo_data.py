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
