"""The collate stage: a worker's decoded samples into one array chunk, cheap to send between processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["collate", "stack_labels"]


def collate(
    samples: list[dict[str, Any]], allocate: Callable[[tuple[int, ...], Any], np.ndarray] | None = None
) -> dict[str, Any]:
    """Stack samples (into ``allocate(shape, dtype)`` where given); mixed bit depths become float32 in [0, 1],
    mixed shapes are an error naming two keys."""
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
    elif allocate is not None:
        stacked = np.stack(images, out=allocate((len(images), *first["image"].shape), images[0].dtype))
    else:
        stacked = np.stack(images)
    chunk: dict[str, Any] = {"image": stacked}
    if "label" in first:
        chunk["label"] = stack_labels([s["label"] for s in samples], [s["key"] for s in samples])
    if "label_mask" in first:
        chunk["label_mask"] = stack_labels([s["label_mask"] for s in samples], [s["key"] for s in samples])
    chunk["key"] = [s["key"] for s in samples]
    chunk["is_padding"] = np.asarray([bool(s.get("is_padding", False)) for s in samples], dtype=bool)
    for name in ("roi", "rois"):  # the ROI, and per-finding ROIs of multi-label samples
        if name in first:
            chunk[name] = np.stack([s.get(name, np.zeros_like(first[name])) for s in samples])
    if "meta" in first:
        chunk["meta"] = [s.get("meta", {}) for s in samples]
    return chunk


def stack_labels(labels: list[Any], keys: list[Any]) -> np.ndarray:
    """Class indices as int64 ``(B,)``; finding vectors (or masks) as float32 ``(B, C)``, one length for all."""
    if not labels or np.ndim(labels[0]) == 0:
        return np.asarray(labels, dtype=np.int64)
    lengths = {len(label) for label in labels}
    if len(lengths) > 1:
        odd = next(k for k, label in zip(keys, labels, strict=True) if len(label) != len(labels[0]))
        raise ValueError(
            f"samples {keys[0]} and {odd} hold label vectors of {sorted(lengths)} findings: one batch, one length"
        )
    return np.stack(labels).astype(np.float32, copy=False)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 → float32 in [0, 1] by the dtype's full range (16-bit PNGs use the high bits)."""
    if image.dtype == np.uint8:
        return np.multiply(image, np.float32(1 / 255), dtype=np.float32)
    if image.dtype == np.uint16:
        return np.multiply(image, np.float32(1 / 65535), dtype=np.float32)
    return image.astype(np.float32, copy=False)  # float32 already (converted in a worker): no copy
