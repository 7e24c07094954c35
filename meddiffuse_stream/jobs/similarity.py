"""How far an augmented image is from its original, perceptually: SSIM (Wang et al., 2004).

The standard form: Gaussian window (σ = 1.5 px, radius 3σ), C1 = (0.01 L)², C2 = (0.03 L)² with L = 1 (images in
[0, 1]), the mean of the SSIM map per image. 1 means identical; unrelated images of natural statistics score near 0.
"""

from __future__ import annotations

import torch

from ..augment.mix import gaussian_blur

__all__ = ["ssim"]

_C1, _C2 = 0.01**2, 0.03**2


def ssim(first: torch.Tensor, second: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """``(B,)`` mean SSIM of ``(B, C, H, W)`` image pairs in [0, 1] (channels averaged)."""
    if first.shape != second.shape:
        raise ValueError(f"ssim needs images of one shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    batch, channels = first.shape[:2]
    x = first.float().reshape(batch * channels, 1, *first.shape[-2:])
    y = second.float().reshape(batch * channels, 1, *second.shape[-2:])
    mean_x, mean_y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    var_x = gaussian_blur(x * x, sigma) - mean_x**2
    var_y = gaussian_blur(y * y, sigma) - mean_y**2
    cov = gaussian_blur(x * y, sigma) - mean_x * mean_y
    value = ((2 * mean_x * mean_y + _C1) * (2 * cov + _C2)) / ((mean_x**2 + mean_y**2 + _C1) * (var_x + var_y + _C2))
    return value.flatten(1).mean(dim=1).view(batch, channels).mean(dim=1)
