"""The shortcut phantom's design: splits by source scan, and a background cue correlated with the label.

*Splits by group.* A group is one patient or acquisition (a scan is its own group unless the scan set says
otherwise). Within each modality, the groups are put in a seeded order and dealt to test, val and train
(``test_fraction`` and ``val_fraction`` of that modality's groups, at least one each for a modality with three or
more); a sample draws its split with those shares of ``n``, then a scan of that split. No group is in two splits,
so a val or test crop never shares a patient with a training crop, and every split holds the main modalities.

*The cue* is a faint periodic "scanner texture" laid over the whole image (a horizontal grating, period 4 px,
amplitude 0.012 ≈ 3 grey levels, random phase): in train and val it is on ``shortcut`` of the lesion images and on
``1 - shortcut`` of the others; in test the other way round. A classifier may learn the cue instead of (or beside)
the lesion: it then does well on val and badly on test. An augmentation that changes the background while keeping
the lesion weakens the cue in what the student sees, so it has something to gain here; one that keeps the
background (or copies it from another image of the same class) has not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .demo_scans import Scan

__all__ = ["CUE_AMPLITUDE", "CUE_PERIOD", "add_cue", "cue_present", "deal_samples", "group_splits"]

CUE_PERIOD = 4
CUE_AMPLITUDE = 0.012


def group_splits(scans: Sequence[Scan], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Scan name -> split, dealt by group within each modality: a pure function of the scans and the seed."""
    splits: dict[str, str] = {}
    for modality in sorted({scan.modality for scan in scans}):
        units = sorted({scan.unit for scan in scans if scan.modality == modality})
        order = [units[i] for i in np.random.default_rng((seed, 7)).permutation(len(units))]
        tests = max(1, round(test_fraction * len(units))) if len(units) >= 3 else 0
        vals = max(1, round(val_fraction * len(units))) if len(units) >= 3 else 0
        if tests + vals >= len(units) > 0 and len(units) >= 3:
            raise ValueError(
                f"{len(units)} {modality} groups leave none for train with val {val_fraction} and test {test_fraction}"
            )
        dealt = {unit: "test" for unit in order[:tests]}
        dealt.update({unit: "val" for unit in order[tests : tests + vals]})
        dealt.update({unit: "train" for unit in order[tests + vals :]})
        splits.update({scan.name: dealt[scan.unit] for scan in scans if scan.modality == modality})
    missing = {"train", "val", "test"} - set(splits.values())
    if missing:
        raise ValueError(
            f"a phantom split by group needs a modality with at least 3 groups; {len(scans)} scans leave "
            f"{sorted(missing)} empty"
        )
    return splits


def deal_samples(
    scans: Sequence[Scan], n: int, seed: int, val_fraction: float, test_fraction: float
) -> Iterator[tuple[int, np.random.Generator, str, Scan]]:
    """``(index, generator, split, scan)`` for each of ``n`` samples: the scans dealt by group
    (:func:`group_splits`), then per sample a split at the test and val shares and a scan of that split. The
    generator is seeded from ``(seed, index)``; the sample's later draws continue it."""
    splits = group_splits(scans, seed, val_fraction, test_fraction)
    by_split = {name: [s for s in scans if splits[s.name] == name] for name in ("train", "val", "test")}
    for index in range(n):
        rng = np.random.default_rng((seed, index, 0))
        draw = rng.random()
        split = "test" if draw < test_fraction else "val" if draw < test_fraction + val_fraction else "train"
        yield index, rng, split, by_split[split][int(rng.integers(0, len(by_split[split])))]


def cue_present(rng: np.random.Generator, label: int, split: str, shortcut: float) -> bool:
    """Whether this sample carries the cue: ``shortcut`` of lesions (train/val), reversed in test."""
    share = shortcut if label == 1 else 1 - shortcut
    if split == "test":
        share = 1 - share
    return bool(rng.random() < share)


def add_cue(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image with the grating laid over it (phase drawn from ``rng``)."""
    rows = np.arange(image.shape[0], dtype=np.float32)[:, None]
    phase = rng.uniform(0, 2 * np.pi)
    return image + CUE_AMPLITUDE * np.sin(2 * np.pi * rows / CUE_PERIOD + phase).astype(np.float32)
