"""The package version, in a module of its own so that every layer can read it without importing the facade."""

from __future__ import annotations

import importlib.metadata

__all__ = ["__version__"]

try:  # one version, the one pyproject.toml declares and the installed package carries
    __version__ = importlib.metadata.version("meddiffuse-stream")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, never installed
    __version__ = "0+unknown"
