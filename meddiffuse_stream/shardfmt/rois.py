"""Per-finding ROIs of a multi-label sample as one 8-bit mask: bit k of a pixel says finding k is there.

One ``{key}.rois.png`` member holds up to :data:`~.members.ROIS_MAX_FINDINGS` findings whatever overlaps: findings
of one image may share pixels (a line artefact across a band), which separate 0/255 masks would need one member
each for. ``{key}.roi.png`` stays beside it as the union, so readers of one mask keep working. Any PNG reader
reads it (grey, 8 bits); the loader unpacks it to ``rois`` ``(C, H, W)`` 0/1 with ``as_dict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .members import ROIS_MAX_FINDINGS

__all__ = ["pack_finding_rois", "unpack_finding_rois"]


def pack_finding_rois(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 with bit k set where ``masks[k]`` (any truthy value) is; at most 8 findings."""
    stack = np.asarray(masks)
    if stack.ndim != 3 or not 1 <= len(stack) <= ROIS_MAX_FINDINGS:
        raise ValueError(f"expected 1..{ROIS_MAX_FINDINGS} masks of one (H, W) shape, got shape {stack.shape}")
    weights = (1 << np.arange(len(stack), dtype=np.uint16)).reshape(-1, 1, 1)
    return ((stack != 0).astype(np.uint16) * weights).sum(axis=0).astype(np.uint8)


def unpack_finding_rois(bits: np.ndarray, findings: int, where: str) -> np.ndarray:
    """``(findings, H, W)`` uint8 0/1 from an ``(H, W)`` bit mask; ``ValueError`` naming ``where`` when bits above
    the dataset's findings are set or there are more findings than bits."""
    if not 1 <= findings <= ROIS_MAX_FINDINGS:
        raise ValueError(f"{where}: per-finding ROIs hold 1..{ROIS_MAX_FINDINGS} findings, the dataset has {findings}")
    if bits.dtype != np.uint8 or bits.ndim != 2:
        raise ValueError(f"{where}: expected an 8-bit grey mask, got {bits.dtype} of shape {bits.shape}")
    if int(bits.max(initial=0)) >> findings:
        raise ValueError(f"{where}: bits above the dataset's {findings} findings are set")
    shifts = np.arange(findings, dtype=np.uint8).reshape(-1, 1, 1)
    return (bits[None] >> shifts) & 1
