"""What the single- and multi-label MedDiffuseMix share: the statuses a sample can end with, and its mask draw.

(Their own module, so :mod:`.meddiffusemix` and :mod:`.meddiffusemix_findings` need not import each other.)
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["STATUSES", "mask_rng"]

STATUSES = ("accepted", "attenuated", "rejected", "no_evidence", "unconfident", "unchecked", "no_donor")


def mask_rng(mask_seed: int, key: str, draw: int) -> np.random.Generator:
    """The generator of sample ``key``'s mask draw ``draw``: independent of the batch it lands in."""
    digest = hashlib.sha256(f"{mask_seed}|{key}|{draw}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
