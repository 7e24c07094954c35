"""A batch's masks moved as one: the ROI (``roi``, (B, 1, H, W)) and the per-finding ROIs (``rois``, (B, C, H, W)).

Methods that move pixels (``standard``, ``compose_standard``) move a single mask tensor by nearest neighbour; the
stage stacks both masks along the channel axis so one draw moves them alike, and splits them back afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MaskPlanes"]

_NAMES = ("roi", "rois")


@dataclass(frozen=True)
class MaskPlanes:
    """The masks a batch carries, as decoded, and their stack ``(B, roi channels + rois channels, H, W)``."""

    roi: torch.Tensor | None
    rois: torch.Tensor | None

    @classmethod
    def of(cls, batch: dict[str, Any], device: torch.device) -> MaskPlanes:
        """The batch's ``roi`` and ``rois`` as 0/1 floats on ``device`` (absent ones ``None``)."""
        found = [batch[name].to(device, non_blocking=True).float() if name in batch else None for name in _NAMES]
        return cls(*found)

    @property
    def stacked(self) -> torch.Tensor | None:
        present = [plane for plane in (self.roi, self.rois) if plane is not None]
        return torch.cat(present, dim=1) if present else None

    def split(self, stacked: torch.Tensor | None, *, moved: bool) -> dict[str, torch.Tensor]:
        """``roi`` / ``rois`` cut from ``stacked``; with ``moved``, the decoded ones beside them as
        ``original_roi`` / ``original_rois``."""
        if stacked is None:
            return {}
        out: dict[str, torch.Tensor] = {}
        start = 0
        for name, plane in zip(_NAMES, (self.roi, self.rois), strict=True):
            if plane is None:
                continue
            width = plane.shape[1]
            out[name] = stacked[:, start : start + width] if moved else plane
            if moved:
                out[f"original_{name}"] = plane
            start += width
        return out
