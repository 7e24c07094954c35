"""Classes found rather than declared — from folder names (``imagefolder``) or a label column (``csv`` without
``--classes``) — named in the summary, with a warning for any class far smaller than the rest.

Why: a folder or label spelt two ways (``pneumonia`` and ``pnuemonia``, ``Normal`` and ``normal``) silently makes a
class of one or two images beside classes of hundreds, and a model is then trained to tell them apart. The rule: a
found class is flagged when :data:`SMALL_CLASS_RATIO` × its sample count is at most the median count of the other
found classes (2 images beside classes of 100 or more, 10 beside 500), and always when it has no sample at all (an
integer label no row uses). Rare classes of real data — tens of images beside a thousand — are not flagged.
Declared classes (``--classes``) and the fixed classes of the other formats are the user's or the release's
decision and are not checked.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence

from .base import SourceItem

__all__ = ["SMALL_CLASS_RATIO", "class_counts", "found_classes_line", "small_class_warnings", "small_classes"]

SMALL_CLASS_RATIO = 50


def class_counts(class_names: Sequence[str], items: Sequence[SourceItem]) -> dict[str, int]:
    """Inputs per class, in class order (multi-label items, which carry findings, are not counted)."""
    counted = Counter(item.label for item in items if item.findings is None)
    return {name: counted.get(index, 0) for index, name in enumerate(class_names)}


def small_classes(counts: Mapping[str, int], ratio: int = SMALL_CLASS_RATIO) -> list[str]:
    """The classes :data:`SMALL_CLASS_RATIO` times smaller than the median of the others (or empty)."""
    if len(counts) < 2:
        return []
    flagged = []
    for name, count in counts.items():
        others = statistics.median(n for other, n in counts.items() if other != name)
        if count == 0 or count * ratio <= others:
            flagged.append(name)
    return flagged


def small_class_warnings(counts: Mapping[str, int], origin: str) -> list[str]:
    """One warning naming every flagged class, its count and the median of the rest, with what to do."""
    flagged = small_classes(counts)
    if not flagged:
        return []
    shown = ", ".join(f"{name!r} ({counts[name]})" for name in flagged[:5]) + (" …" if len(flagged) > 5 else "")
    rest = [n for name, n in counts.items() if name not in flagged]
    median = f"{statistics.median(rest):g}" if rest else "0"
    return [
        f"class(es) found in {origin} far smaller than the others: {shown} beside a median of {median} inputs; "
        "a misspelt class? rename or merge them, or (csv) pass --classes to name the classes you mean"
    ]


def found_classes_line(counts: Mapping[str, int], origin: str, limit: int = 20) -> str:
    """``classes found in the folder names (3): normal 812, pneumonia 790, pnuemonia 2`` for the summary (the
    first ``limit`` classes; the table above has them all)."""
    listed = ", ".join(f"{name} {count}" for name, count in list(counts.items())[:limit])
    more = f", … ({len(counts) - limit} more)" if len(counts) > limit else ""
    return f"classes found in {origin} ({len(counts)}): {listed}{more}"
