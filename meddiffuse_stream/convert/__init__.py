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
from .chexpert import CheXpertSource
from .csv_manifest import CsvSource
from .imagefolder import ImageFolderSource
from .lock import OutputLockedError
from .mura import MuraSource
from .nih import NihSource
from .pcam import PcamSource
from .pipeline import ConvertOptions, convert_dataset
from .rsna import RsnaSource

__all__ = [
    "FORMATS",
    "FRAME_CHOICES",
    "BreakHisSource",
    "CheXpertSource",
    "ConversionError",
    "ConvertOptions",
    "CsvSource",
    "Discovery",
    "ImageFolderSource",
    "LoadedImage",
    "MuraSource",
    "NihSource",
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
    "nih": NihSource,
    "pcam": PcamSource,
    "breakhis": BreakHisSource,
    "chexpert": CheXpertSource,
    "imagefolder": ImageFolderSource,
    "csv": CsvSource,
}
