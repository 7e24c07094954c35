"""The collate stage: a worker's decoded samples into one array chunk, cheap to send between processes."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["collate"]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; mixed bit depths become float32 in [0, 1], mixed shapes are an error naming two keys."""
    first = samples[0]
    images = [s["image"] for s in samples]
    shapes = {i.shape for i in images}
    if len(shapes) > 1:
        odd = next(s for s in samples if s["image"].shape != first["image"].shape)
        raise ValueError(
            f"samples {first['key']} {tuple(first['image'].shape)} and {odd['key']} {tuple(odd['image'].shape)} "
            "differ in shape: pass resize= (and channels= where grey and colour images mix) to MedDiffuseLoader, "
            "or convert with --resize"
        )
    if not all(isinstance(i, np.ndarray) for i in images):  # a user transform returned tensors
        import torch

        stacked: Any = torch.stack([torch.as_tensor(i) for i in images])
    elif len({i.dtype for i in images}) > 1:
        stacked = np.stack([to_unit_float(i) for i in images])
    else:
        stacked = np.stack(images)
    chunk: dict[str, Any] = {
        "image": stacked,
        "label": np.asarray([s["label"] for s in samples], dtype=np.int64),
        "key": [s["key"] for s in samples],
        "is_padding": np.asarray([bool(s.get("is_padding", False)) for s in samples], dtype=bool),
    }
    if "roi" in first:
        chunk["roi"] = np.stack([s.get("roi", np.zeros_like(first["roi"])) for s in samples])
    if "meta" in first:
        chunk["meta"] = [s.get("meta", {}) for s in samples]
    return chunk


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 → float32 in [0, 1] by the dtype's full range (16-bit PNGs use the high bits)."""
    if image.dtype == np.uint8:
        return np.multiply(image, np.float32(1 / 255), dtype=np.float32)
    if image.dtype == np.uint16:
        return np.multiply(image, np.float32(1 / 65535), dtype=np.float32)
    return image.astype(np.float32)
