"""KeepAugment (Gong et al., CVPR 2021), selective paste: augment the whole image, then paste back an important
region of the original at its place, so the evidence the classifier uses survives the augmentation.

The image-level augmentation is this project's ``standard`` (flips, ±10° rotations, intensity), so the comparison
with MedDiffuseMix differs only in what changes the background. The region is a square of ``box`` of the image side;
its importance is the mean saliency under it; among all positions whose importance exceeds the ``tau`` quantile of
every position's, one is drawn uniformly (the paper's adaptive threshold). The teacher's saliency is the stage's
(the same maps MedDiffuseMix uses). W is 1 outside the pasted box (no pixel there is the original's at its place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .context import Augmented, BatchInputs
from .geometric import apply_standard, draw_standard

__all__ = ["keepaugment", "paste_boxes"]


def paste_boxes(saliency: torch.Tensor, box: int, tau: float, rng) -> torch.Tensor:
    """``(B, 1, H, W)`` booleans: per image one ``box``-sided square drawn among those of importance above the
    ``tau`` quantile (ties: all positions of the highest score qualify)."""
    scores = F.avg_pool2d(saliency.float(), box, stride=1)
    batch, cols = scores.shape[0], scores.shape[-1]
    flat = scores.flatten(1)
    threshold = torch.quantile(flat, tau, dim=1, keepdim=True)
    eligible = (flat > threshold) | (flat >= flat.amax(dim=1, keepdim=True))
    mask = torch.zeros_like(saliency, dtype=torch.bool)
    eligible = eligible.cpu()  # one copy to the host, not one per image
    for index in range(batch):
        choices = torch.nonzero(eligible[index]).flatten().numpy()
        top, left = divmod(int(rng.choice(choices)), cols)
        mask[index, :, top : top + box, left : left + box] = True
    return mask


def keepaugment(inputs: BatchInputs, box: float = 0.375, tau: float = 0.75) -> Augmented:
    assert inputs.saliency is not None, "keepaugment needs saliency"
    images = inputs.images
    saliency = inputs.saliency(None)
    side = max(1, round(box * images.shape[-1]))
    augmented, _ = apply_standard(images, draw_standard(len(images), inputs.rng))
    keep = paste_boxes(saliency, side, tau, inputs.rng)
    out = torch.where(keep, images, augmented)
    weight = (~keep).to(images.dtype)
    return Augmented(out, inputs.labels, weight, details={"saliency": saliency, "protected": keep})
