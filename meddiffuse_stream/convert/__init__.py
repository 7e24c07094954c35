"""Converters from the datasets' own layouts to WebDataset shards, one module per source format."""

from __future__ import annotations

from .base import (
    FRAME_CHOICES,
    ConversionError,
    Discovery,
    LoadedImage,
    ReadRules,
    Reject,
    RejectError,
    SourceFormat,
    SourceItem,
)
from .breakhis import BreakHisSource
from .csv_manifest import CsvSource
from .imagefolder import ImageFolderSource
from .lock import OutputLockedError
from .mura import MuraSource
from .pcam import PcamSource
from .pipeline import ConvertOptions, convert_dataset
from .rsna import RsnaSource

__all__ = [
    "FORMATS",
    "FRAME_CHOICES",
    "BreakHisSource",
    "ConversionError",
    "ConvertOptions",
    "CsvSource",
    "Discovery",
    "ImageFolderSource",
    "LoadedImage",
    "MuraSource",
    "OutputLockedError",
    "PcamSource",
    "ReadRules",
    "Reject",
    "RejectError",
    "RsnaSource",
    "SourceFormat",
    "SourceItem",
    "convert_dataset",
]

FORMATS: dict[str, type[SourceFormat]] = {
    "rsna": RsnaSource,
    "mura": MuraSource,
    "pcam": PcamSource,
    "breakhis": BreakHisSource,
    "imagefolder": ImageFolderSource,
    "csv": CsvSource,
}
