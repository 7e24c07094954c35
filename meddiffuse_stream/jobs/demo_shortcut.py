"""The shortcut phantom's design: splits by source scan, and a background cue correlated with the label.

*Splits by scan.* The scans are put in a seeded order and dealt to test, val and train (``test_fraction`` and
``val_fraction`` of the scans, at least one each); a sample draws its split with those shares of ``n``, then a
scan of that split. No scan is in two splits, so a val or test crop never shares anatomy with a training crop.

*The cue* is a faint periodic "scanner texture" laid over the whole image (a horizontal grating, period 4 px,
amplitude 0.012 ≈ 3 grey levels, random phase): in train and val it is on ``shortcut`` of the lesion images and on
``1 - shortcut`` of the others; in test the other way round. A classifier may learn the cue instead of (or beside)
the lesion: it then does well on val and badly on test. An augmentation that changes the background while keeping
the lesion weakens the cue in what the student sees, so it has something to gain here; one that keeps the
background (or copies it from another image of the same class) has not.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CUE_AMPLITUDE", "CUE_PERIOD", "add_cue", "cue_present", "scan_splits"]

CUE_PERIOD = 4
CUE_AMPLITUDE = 0.012


def scan_splits(names: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Scan name -> split, a pure function of the names and the seed."""
    if len(names) < 3:
        raise ValueError(f"a phantom split by scan needs at least 3 scans, got {len(names)}")
    order = [names[i] for i in np.random.default_rng((seed, 7)).permutation(len(names))]
    tests = max(1, round(test_fraction * len(names)))
    vals = max(1, round(val_fraction * len(names)))
    if tests + vals >= len(names):
        raise ValueError(f"{len(names)} scans leave none for train with val {val_fraction} and test {test_fraction}")
    splits = {name: "test" for name in order[:tests]}
    splits.update({name: "val" for name in order[tests : tests + vals]})
    splits.update({name: "train" for name in order[tests + vals :]})
    return splits


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
