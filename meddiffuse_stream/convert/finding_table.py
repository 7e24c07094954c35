"""The multi-label part of a conversion summary: per finding, its positives (and unknowns) in each split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["finding_lines"]


def finding_lines(splits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``finding  train  val  test`` rows of ``positive`` — ``positive/unknown`` where a split has unknowns;
    nothing for a multi-class summary."""
    with_labels = {name: entry["labels"] for name, entry in splits.items() if entry.get("labels")}
    if not with_labels:
        return []
    findings = list(dict.fromkeys(f for labels in with_labels.values() for f in labels))
    unknowns = {s for s, labels in with_labels.items() if any(c["unknown"] for c in labels.values())}
    header = ["finding", *(f"{s} pos/unk" if s in unknowns else f"{s} pos" for s in with_labels)]
    rows = [
        [
            finding,
            *(
                f"{labels[finding]['positive']}/{labels[finding]['unknown']}"
                if split in unknowns
                else str(labels[finding]["positive"])
                for split, labels in with_labels.items()
            ),
        ]
        for finding in findings
    ]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *rows]]
