"""Procedural fractal images for DiffuseMix's fractal blending: iterated function systems, rendered here.

DiffuseMix blends a fractal image into each hybrid (λ = 0.2) from a collection of fractal pictures. None can be
downloaded here, so they are drawn the way FractalDB draws its images: an iterated function system of 2–4 random
contractive affine maps, run as a chaos game over many points at once, its visit counts rendered on the image grid
(log-scaled, blurred by one pixel, normalised to [0, 1]). Every image is a pure function of the generator's draws.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ifs_fractals", "random_ifs"]


def random_ifs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(linear (n, 2, 2), shift (n, 2), probability (n,))`` of n = 2–4 contractive maps (singular values ≤ 0.8),
    each chosen with a probability proportional to its area factor, as FractalDB does."""
    count = int(rng.integers(2, 5))
    linear = rng.uniform(-1, 1, (count, 2, 2))
    for index in range(count):
        u, s, vt = np.linalg.svd(linear[index])
        linear[index] = u @ np.diag(np.clip(s, 0.2, 0.8) * rng.uniform(0.6, 1.0, 2)) @ vt
    shift = rng.uniform(-1, 1, (count, 2))
    weight = np.abs(np.linalg.det(linear)) + 1e-3
    return linear, shift, weight / weight.sum()


def _render(rng: np.random.Generator, height: int, width: int, points: int, iterations: int) -> np.ndarray:
    linear, shift, probability = random_ifs(rng)
    position = rng.uniform(-1, 1, (points, 2))
    visits = []
    for step in range(iterations):
        choice = rng.choice(len(shift), size=points, p=probability)
        position = np.einsum("nij,nj->ni", linear[choice], position) + shift[choice]
        if step >= 8:  # after a few maps every point lies on the attractor
            visits.append(position.copy())
    cloud = np.concatenate(visits)
    low, high = cloud.min(axis=0), cloud.max(axis=0)
    scaled = (cloud - low) / np.maximum(high - low, 1e-9)
    rows = np.clip((scaled[:, 1] * (height - 1)).round().astype(int), 0, height - 1)
    cols = np.clip((scaled[:, 0] * (width - 1)).round().astype(int), 0, width - 1)
    counts = np.zeros((height, width))
    np.add.at(counts, (rows, cols), 1)
    return np.log1p(counts)


def ifs_fractals(
    rng: np.random.Generator, count: int, height: int, width: int, *, points: int = 2000, iterations: int = 24
) -> torch.Tensor:
    """``count`` fractal images in [0, 1], ``(count, 1, height, width)``."""
    images = torch.as_tensor(np.stack([_render(rng, height, width, points, iterations) for _ in range(count)]))
    images = images.float().unsqueeze(1)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    images = F.conv2d(F.pad(images, (1, 1, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 3))
    images = F.conv2d(F.pad(images, (0, 0, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 1))
    flat = images.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (images - low) / (high - low).clamp(min=1e-6)
