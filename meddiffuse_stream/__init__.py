"""meddiffuse-stream: medical image datasets as WebDataset shards, streamed for training with MedDiffuseMix.

Importing the package is cheap and needs no torch: every public name is loaded on first use, so the conversion
tools start fast and install without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)
