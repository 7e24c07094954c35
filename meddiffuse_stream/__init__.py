"""meddiffuse-stream: medical image datasets as WebDataset shards, streamed for training with MedDiffuseMix.

Importing the package is cheap: the conversion API needs no torch; torch-based parts load on first use.
"""

from __future__ import annotations

import importlib.metadata

try:  # one version, the one pyproject.toml declares and the installed package carries
    __version__ = importlib.metadata.version("meddiffuse-stream")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, never installed
    __version__ = "0+unknown"

from .convert import FORMATS, ConversionError, ConvertOptions, convert_dataset
from .demo_data import DemoSource
from .storage import Location

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


def __getattr__(name: str):
    """``MedDiffuseLoader`` and ``unit_float`` import torch: loaded on first use, so conversion tools start fast
    without it."""
    if name == "MedDiffuseLoader":
        from .loader import MedDiffuseLoader

        return MedDiffuseLoader
    if name == "unit_float":
        from .nodes.to_torch import unit_float

        return unit_float
    if name == "RetryPolicy":
        from .retry import RetryPolicy

        return RetryPolicy
    raise AttributeError(f"module 'meddiffuse_stream' has no attribute {name!r}")
