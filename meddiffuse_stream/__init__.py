"""meddiffuse-stream: medical image datasets as WebDataset shards, streamed for training with MedDiffuseMix.

Importing the package is cheap: the conversion API needs no torch; torch-based parts load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .convert import FORMATS, ConversionError, ConvertOptions, convert_dataset
from .demo_data import DemoSource
from .storage import Location

__all__ = [
    "FORMATS",
    "ConversionError",
    "ConvertOptions",
    "DemoSource",
    "Location",
    "__version__",
    "convert_dataset",
]
