"""What the chest X-ray converters share: their label tables (plain or gzipped), finding cells under an
uncertainty policy, and the images found below SRC by file name — one scan and one dict, never a search per row."""

from __future__ import annotations

import gzip
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..storage import Location
from .base import Reject
from .scan import FileScan, FoundFile

__all__ = [
    "UNCERTAIN_POLICIES",
    "ImagesByName",
    "find_table",
    "finding_value",
    "finding_values",
    "read_table",
]

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")  # -1 becomes unknown (masked), positive or negative
_NUMBER = re.compile(r"^\s*(-?[01])(?:\.0*)?\s*$")


def finding_value(text: str, *, blank: int, uncertain: str) -> int:
    """A table cell as a finding: ``1`` / ``0`` / ``-1`` (written ``1.0`` and so on too), blank as ``blank``;
    ``-1`` (uncertain) per ``uncertain``. Returns 1, 0 or -1 (unknown); ``ValueError`` for anything else."""
    if not text.strip():
        return blank
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(f"{text.strip()[:20]!r} is not 1, 0, -1 or blank")
    value = int(match.group(1))
    if value == -1:
        return {"ignore": -1, "ones": 1, "zeros": 0}[uncertain]
    return value


def finding_values(*, blank: int, uncertain: str) -> dict[str, int]:
    """The cell texts tables really hold, mapped once per policy (a dict look-up per cell instead of a parse);
    anything else goes through :func:`finding_value`, which names what is wrong."""
    texts = ["", "1", "1.0", "0", "0.0", "-1", "-1.0"]
    return {text: finding_value(text, blank=blank, uncertain=uncertain) for text in texts}


def find_table(files: Iterable[str], names: tuple[str, ...]) -> str | None:
    """The path of the first of ``names`` (plain or ``.gz``) among ``files``: at the top of SRC first, then the
    shallowest below it."""
    paths = sorted(files, key=lambda p: (p.count("/"), p))
    for name in names:
        for candidate in (name, name + ".gz"):
            found = next((p for p in paths if posixpath.basename(p) == candidate), None)
            if found is not None:
                return found
    return None


def read_table(src: Location, relative: str) -> bytes:
    """The bytes of a label table below SRC, gunzipped when its name ends in ``.gz``."""
    data = src.read_bytes(relative)
    if relative.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{src.display(relative)}: not a readable gzip file ({error})") from None
    return data


@dataclass
class ImagesByName:
    """The images of a scan by file name (one dict, so 112,000 rows are 112,000 look-ups), with the files that
    are no inputs: a second file of the same name, special files and broken links, all as rejects."""

    found: dict[str, tuple[str, FoundFile]] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)

    @classmethod
    def of(cls, scan: FileScan, suffixes: tuple[str, ...]) -> ImagesByName:
        images = cls()
        for path, found in scan.files.items():
            if not path.lower().endswith(suffixes):
                continue
            name = posixpath.basename(path)
            if name in images.found:
                first = images.found[name][0]
                images.rejects.append(Reject(path, f"a second image named {name} (the first is {first}): not used"))
            else:
                images.found[name] = (path, found)
        for path, reason in scan.refused.items():
            if path.lower().endswith(suffixes):
                images.refused.setdefault(posixpath.basename(path), (path, reason))
        return images
