"""What the single- and multi-label MedDiffuseMix share: the statuses a sample can end with, and its mask draw.

(Their own module, so :mod:`.meddiffusemix` and :mod:`.meddiffusemix_findings` need not import each other.)
"""

from __future__ import annotations

import enum
import hashlib

import numpy as np

__all__ = ["STATUSES", "MixStatus", "mask_rng"]


class MixStatus(enum.IntEnum):
    """How one sample left the mixer (its value is what the per-sample status tensor holds)."""

    ACCEPTED = 0  # mixed, and the check passed
    ATTENUATED = 1  # mixed at reduced strength after a failed check
    REJECTED = 2  # every try failed the check: kept as it was
    NO_EVIDENCE = 3  # a flat saliency map: evidence unknown, not mixed
    UNCONFIDENT = 4  # the teacher doubts the label: not mixed
    UNCHECKED = 5  # mixed without the check (check off)
    NO_DONOR = 6  # no variant or donor image to mix in


STATUSES = tuple(status.name.lower() for status in MixStatus)  # the counter names, by status value


def mask_rng(mask_seed: int, key: str, draw: int) -> np.random.Generator:
    """The generator of sample ``key``'s mask draw ``draw``: independent of the batch it lands in."""
    digest = hashlib.sha256(f"{mask_seed}|{key}|{draw}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
