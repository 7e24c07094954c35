from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddiffuse_stream.convert.base import SourceItem
from meddiffuse_stream.convert.splits import assign_splits, parse_split_spec


def _items(patients: list[int]) -> list[SourceItem]:
    return [SourceItem(f"k{i}", 0, f"f{i}", None, patient_id=f"p{p}") for i, p in enumerate(patients)]


def test_parse_split_spec():
    assert parse_split_spec("train=0.8,val=0.1,test=0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    for bad, message in [
        ("train=0.8,val=0.1", "sum to 0.9"),
        ("train=1.1,val=-0.1", "above 0"),
        ("train", "name=fraction"),
        ("Train=1", "name=fraction"),
        ("train=0.5,train=0.5", "twice"),
        ("train=x", "not a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_split_spec(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(0, 10_000))
def test_no_patient_is_in_two_splits_and_assignment_is_deterministic(patients, seed):
    items = _items(patients)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    assignment = assign_splits(items, fractions, seed)
    assert assignment == assign_splits(list(reversed(items)), fractions, seed)
    splits_of_patient = defaultdict(set)
    for item in items:
        splits_of_patient[item.patient_id].add(assignment[item.key])
    assert all(len(s) == 1 for s in splits_of_patient.values())


def test_split_sizes_follow_the_fractions_within_one_patient():
    items = _items([i // 3 for i in range(3000)])  # 1000 patients, 3 images each
    counts = Counter(assign_splits(items, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=7).values())
    assert abs(counts["train"] - 2400) <= 3 and abs(counts["val"] - 300) <= 3 and abs(counts["test"] - 300) <= 3


def test_another_seed_gives_another_split():
    items = _items(list(range(200)))
    fractions = {"train": 0.5, "test": 0.5}
    assert assign_splits(items, fractions, 0) != assign_splits(items, fractions, 1)


def test_a_misspelt_split_is_refused_with_a_suggestion_and_others_need_naming():
    with pytest.raises(ValueError, match=r"unknown split 'vla'; did you mean 'val'\?"):
        parse_split_spec("train=0.8,vla=0.2")
    with pytest.raises(ValueError, match="--extra-splits"):
        parse_split_spec("train=0.8,calib=0.2")
    assert parse_split_spec("train=0.8,calib=0.2", extra=("calib",)) == {"train": 0.8, "calib": 0.2}
