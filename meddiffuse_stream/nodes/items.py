"""What flows between the per-worker stages besides sample dicts.

Every planned sample keeps its slot from the reader to the batcher: a sample that cannot be used, or that a filter
drops, travels on as a :class:`Skipped` marker. That keeps every stage one-in-one-out, so a worker's position is a
sample count, batches stay aligned with the epoch plan, and a restored run skips exactly what was yielded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["PlannedSample", "Skipped", "as_tensor_sample"]


class PlannedSample(NamedTuple):
    """A raw sample (or the reader's ``Skip``) in plan order; ``padding``: it repeats a sample to even out ranks.

    A tuple, not a frozen dataclass: one is made per sample, and tuples are made fastest."""

    item: Any
    padding: bool = False


@dataclass(frozen=True)
class Skipped:
    """A planned sample that will not be yielded: ``kind`` buckets it in the counters (``skipped:<kind>``)."""

    kind: str
    reason: str
    key: str | None = None
    padding: bool = False


def as_tensor_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample as user code sees it: ``image`` a float32 tensor in [0, 1] (C, H, W), as with a DataLoader."""
    import numpy as np
    import torch

    from .collate import to_unit_float

    image = sample["image"]
    if isinstance(image, np.ndarray):
        return dict(sample, image=torch.from_numpy(to_unit_float(image)))
    return sample
