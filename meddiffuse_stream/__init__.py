"""meddiffuse-stream: medical image datasets as WebDataset shards, streamed for training with MedDiffuseMix.

Importing the package is cheap and needs no torch: every public name is loaded on first use, so the conversion
tools start fast and install without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .convert import FORMATS, ConversionError, ConvertOptions, convert_dataset
    from .jobs.demo_data import DemoSource
    from .loader import MedDiffuseLoader
    from .nodes.to_torch import unit_float
    from .storage import Location, RetryPolicy

__all__ = [
    "FORMATS",
    "ConversionError",
    "ConvertOptions",
    "DemoSource",
    "Location",
    "MedDiffuseLoader",
    "RetryPolicy",
    "__version__",
    "convert_dataset",
    "unit_float",
]

# public name -> the module that defines it (torch-based ones import torch when first used)
_HOMES = {
    "FORMATS": ".convert",
    "ConversionError": ".convert",
    "ConvertOptions": ".convert",
    "DemoSource": ".jobs.demo_data",
    "Location": ".storage",
    "MedDiffuseLoader": ".loader",
    "RetryPolicy": ".storage",
    "convert_dataset": ".convert",
    "unit_float": ".nodes.to_torch",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meddiffuse_stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
