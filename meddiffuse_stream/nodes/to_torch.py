"""Batches into torch: a worker's numpy chunk to tensors, pinned and on the device when asked.

The default chain's workers deliver images in their final dtype (float32 in [0, 1], or uint8/uint16 for the device
to convert with :func:`unit_float`), in shared memory: here they only become tensors, without a copy. Where a
chunk still needs converting (a 0-worker loader, user stages) numpy does it, not torch: torch's intra-op threads
would spin on the cores the decode workers need (9.9k → 16.8k samples/s on 2 cores when this changed).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from ..options import Dtype
from .collate import to_unit_float
from .pixels import deliver

__all__ = ["ToTorch", "to_device", "unit_float"]


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """Delivered images as float32 in [0, 1] wherever they are (run it after the copy to the device): uint8 by
    1/255, uint16 by 1/65535; float images pass unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1 / 255)
    if images.dtype == torch.uint16:  # few kernels take uint16: its bits as int16, widened, sign bits dropped
        wide = images.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
        return wide.to(torch.float32).mul_(1 / 65535)
    return images if images.dtype == torch.float32 else images.to(torch.float32)


def to_device(value: Any, device: torch.device | None, pin: bool = False) -> Any:
    """A tensor (or a dict/list/tuple of them) pinned and/or copied to ``device`` without blocking."""
    if isinstance(value, dict):
        return {k: to_device(v, device, pin) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(to_device(v, device, pin) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    on_cuda = device is not None and device.type == "cuda"
    if (pin or on_cuda) and value.device.type == "cpu" and not value.is_pinned():
        value = value.pin_memory()  # page-locked, so the copy below runs asynchronously
    if device is not None and device.type != "cpu":
        value = value.to(device, non_blocking=True)
    return value


class ToTorch(BaseNode[Any]):
    """Chunk → ``{"image": (B, C, H, W) float32 in [0, 1] (or ``dtype``), "label": int64, "key", "is_padding":
    bool, "position": (epoch, rank, batch index), "roi"? (float32, or uint8 with an integer ``dtype``), "meta"?}``;
    with ``user_batches`` (a chain with a ``collate_fn``) every batch passes as the ``collate_fn`` made it, as a
    DataLoader hands it over.

    ``pin_memory`` pins batches' tensors (only where CUDA is available, as a DataLoader does); ``device`` copies
    them there without blocking. State: the upstream's.
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Any],
        *,
        pin_memory: bool = False,
        device: str | torch.device | None = None,
        dtype: Dtype = "float32",
        user_batches: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.dtype = dtype
        self.user_batches = user_batches
        self.device = torch.device(device) if device is not None else None
        self.pin = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pin:
            warnings.warn("pin_memory=True but CUDA is not available: batches are not pinned", stacklevel=2)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def next(self) -> Any:
        chunk = next(self.source)
        batch = chunk if self.user_batches else convert_chunk(chunk, self.dtype)
        return to_device(batch, self.device, self.pin) if self.pin or self.device is not None else batch


def convert_chunk(chunk: dict[str, Any], dtype: Dtype = "float32") -> dict[str, Any]:
    """A default chunk's arrays as tensors (no copy where they already are what is delivered): the image as
    float32 in [0, 1], or in the integer ``dtype`` asked for."""
    image = chunk["image"]
    if isinstance(image, torch.Tensor):
        if dtype != "float32" and image.is_floating_point():
            raise TypeError(
                f"dtype={dtype!r} delivers the stored integers, but a stage of the loader made float "
                "images: drop dtype= or keep the stage's images integer"
            )
        tensor = image.to(torch.float32) if dtype == "float32" else image
    elif dtype == "float32":
        tensor = torch.from_numpy(to_unit_float(image))
    else:
        tensor = torch.from_numpy(deliver(image, dtype, chunk["key"]))
    batch: dict[str, Any] = {"image": tensor}
    for name in ("label", "label_mask"):  # class indices (int64), or finding vectors and their mask (float32)
        if name in chunk:
            batch[name] = torch.as_tensor(chunk[name])
    batch["key"] = chunk["key"]
    if "is_padding" in chunk:
        batch["is_padding"] = torch.as_tensor(chunk["is_padding"])
    for name in ("roi", "rois"):  # rois: per-finding ROIs (B, C, H, W) of multi-label samples
        if name in chunk:
            mask = np.asarray(chunk[name])
            batch[name] = torch.from_numpy(mask.astype(np.float32, copy=False) if dtype == "float32" else mask)
    if "meta" in chunk:
        batch["meta"] = chunk["meta"]
    if "position" in chunk:
        batch["position"] = chunk["position"]  # (epoch, rank, batch index)
    return batch
