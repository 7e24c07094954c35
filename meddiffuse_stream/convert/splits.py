"""Patient-level splits: every image of one patient lands in one split, so no patient leaks across splits."""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from .base import SourceItem

__all__ = [
    "DEFAULT_SPLITS",
    "KNOWN_SPLITS",
    "OFFICIAL",
    "assign_splits",
    "parse_split_spec",
    "patient_of",
    "patients_in_several_splits",
]

DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
KNOWN_SPLITS = ("train", "val", "test")  # what loaders, training and the experiment runner look for
OFFICIAL = "official"  # --split official: the release's own split lists (formats say what they keep)
_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_split_spec(spec: str, extra: Iterable[str] = ()) -> dict[str, float] | None:
    """``"train=0.8,val=0.1,test=0.1"`` → ``{"train": 0.8, ...}``; fractions must be positive and sum to 1.
    ``"official"`` → ``None``: the dataset's own splits (the format checks that it has them). Names other than
    train / val / test are refused unless listed in ``extra`` (``--extra-splits``): a misspelt ``vla`` would
    otherwise become a split no loader asks for."""
    if spec.strip() == OFFICIAL:
        return None
    allowed = (*KNOWN_SPLITS, *extra)
    fractions: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not _SPLIT_NAME.match(name):
            raise ValueError(f"--split {spec!r}: each part must look like name=fraction with a lower-case name")
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"--split {spec!r}: unknown split {name!r}; {hint}splits are {', '.join(allowed)} "
                "(name others with --extra-splits)"
            )
        if name in fractions:
            raise ValueError(f"--split {spec!r}: split {name!r} appears twice")
        try:
            fractions[name] = float(value)
        except ValueError as error:
            raise ValueError(f"--split {spec!r}: {value!r} is not a number") from error
        if not fractions[name] > 0:
            raise ValueError(f"--split {spec!r}: the fraction of {name!r} must be above 0")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"--split {spec!r}: fractions sum to {total:g}, not 1")
    return fractions


def patient_of(item: SourceItem) -> str:
    """The grouping id: the patient where known, otherwise the sample itself."""
    return item.patient_id if item.patient_id else f"sample:{item.key}"


def assign_splits(items: Iterable[SourceItem], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Map each item key to a split, whole patients at a time, deterministic for ``seed``.

    Patients are put in a seeded random order and laid end to end; a patient goes to the split whose share of
    that line holds the patient's midpoint, so split sizes follow the fractions to within one patient.
    """
    by_patient: dict[str, list[str]] = defaultdict(list)
    for item in items:
        by_patient[patient_of(item)].append(item.key)
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    total = sum(len(keys) for keys in by_patient.values())
    bounds = np.cumsum(list(fractions.values())) * total
    names = list(fractions)
    assignment: dict[str, str] = {}
    position = 0
    for index in order:
        keys = by_patient[patients[index]]
        midpoint = position + len(keys) / 2
        split = names[min(int(np.searchsorted(bounds, midpoint, side="right")), len(names) - 1)]
        for key in keys:
            assignment[key] = split
        position += len(keys)
    return assignment


def patients_in_several_splits(items: Iterable[SourceItem], split_of: Mapping[str, str]) -> dict[str, list[str]]:
    """Patients whose images lie in more than one split (``split_of``: item key → split), each with its splits:
    empty for any split made here; an official split list can still put one patient on both sides."""
    splits: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.patient_id:
            splits[item.patient_id].add(split_of[item.key])
    return {patient: sorted(names) for patient, names in sorted(splits.items()) if len(names) > 1}
