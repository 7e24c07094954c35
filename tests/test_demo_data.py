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


def _fetched_folder(folder, groups):
    """A folder shaped like tools/fetch_scans.py's output: scans.json and one uint16 .npy per scan."""
    (folder / "scans").mkdir(parents=True)
    records = []
    for number, (scan_id, family, group) in enumerate(groups):
        rng = np.random.default_rng(number)
        image = np.cumsum(np.cumsum(rng.normal(size=(96, 112)), axis=0), axis=1)
        stored = ((image - image.min()) / np.ptp(image) * 4000).astype(np.uint16)
        np.save(folder / "scans" / f"{scan_id}.npy", stored)
        records.append({"id": scan_id, "family": family, "group": group})
    (folder / "scans.json").write_text(json.dumps({"summary": {}, "scans": records}))


def test_a_fetched_scan_set_splits_by_group_within_each_modality_and_leaves_other_families_out(tmp_path):
    groups = [(f"ct{i}", "ct", f"gct{i}") for i in range(5)] + [("ct5", "ct", "gct0")]  # ct0 and ct5: one patient
    groups += [(f"mr{i}", "mr", f"gmr{i}") for i in range(4)] + [("cr0", "xray", "gcr0"), ("us0", "us", "gus0")]
    _fetched_folder(tmp_path / "scans", groups)
    source = DemoSource(n=300, size=32, seed=0, shortcut=0.75, scans_dir=str(tmp_path / "scans"))
    convert_dataset(source, None, str(tmp_path / "demo"), ConvertOptions(shard_size=100), progress=False)
    dataset = load_dataset(tmp_path / "demo")
    check_accounting(dataset)
    splits_of: dict[str, set[str]] = {}
    modalities: dict[str, set[str]] = {}
    used = set()
    for row in dataset["index"]:
        meta = json.loads(dataset["samples"][row["key"]]["json"])
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
        modalities.setdefault(row["split"], set()).add(meta["modality"])
        used.add(meta["scan"])
    assert all(len(s) == 1 for s in splits_of.values()), "no group in two splits"
    assert "gct0" in splits_of and "ct5" not in splits_of, "a group's scans share its name as the patient"
    assert {"ct0", "ct5"} <= used and "us0" not in used, "both scans of a group are drawn; ultrasound is left out"
    assert all({"ct", "mr"} <= modalities[split] for split in ("train", "val", "test")), modalities


def test_group_splits_deal_each_modality_and_need_enough_groups():
    from meddiffuse_stream.jobs.demo_scans import Scan
    from meddiffuse_stream.jobs.demo_shortcut import group_splits

    scans = [Scan(f"ct{i}", "ct", "-", f"g{i // 2}") for i in range(20)] + [Scan("cr", "cr", "-")]
    splits = group_splits(scans, seed=3, val_fraction=0.1, test_fraction=0.2)
    by_group: dict[str, set[str]] = {}
    for scan in scans:
        by_group.setdefault(scan.unit, set()).add(splits[scan.name])
    assert all(len(s) == 1 for s in by_group.values())
    dealt = [next(iter(s)) for g, s in sorted(by_group.items()) if g.startswith("g")]
    assert (dealt.count("test"), dealt.count("val"), dealt.count("train")) == (2, 1, 7)
    assert splits["cr"] == "train", "a modality with fewer than 3 groups trains only"
    assert group_splits(scans, 3, 0.1, 0.2) == splits and group_splits(scans, 4, 0.1, 0.2) != splits
    with pytest.raises(ValueError, match="needs a modality with at least 3 groups"):
        group_splits(scans[:4], 0, 0.1, 0.2)
