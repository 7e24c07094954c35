"""Converters from the datasets' own layouts to WebDataset shards, one module per source format."""

from __future__ import annotations

from .base import Discovery, LoadedImage, Reject, RejectError, SourceFormat, SourceItem
from .breakhis import BreakHisSource
from .csv_manifest import CsvSource
from .imagefolder import ImageFolderSource
from .mura import MuraSource
from .pcam import PcamSource
from .pipeline import ConversionError, ConvertOptions, convert_dataset
from .rsna import RsnaSource

__all__ = [
    "FORMATS",
    "BreakHisSource",
    "ConversionError",
    "ConvertOptions",
    "CsvSource",
    "Discovery",
    "ImageFolderSource",
    "LoadedImage",
    "MuraSource",
    "PcamSource",
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
