"""The cells of NIH ChestX-ray14's tables: ``Finding Labels`` as a finding vector, and the age, sex, view, follow-up,
size and spacing that go into each sample's metadata (both the 2017 table, ages like ``058Y``, and ``_v2020``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["FINDINGS", "NO_FINDING", "parse_age", "parse_box", "parse_findings", "row_meta"]

# the order of the release's paper (Wang et al. 2017) and of most models trained on it since
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
_INDEX = {name: k for k, name in enumerate(FINDINGS)}
_AGE = re.compile(r"^\s*(\d{1,3})\s*([YMD]?)\s*$", re.IGNORECASE)
_YEARS_PER_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "D": 1 / 365.25}


def parse_findings(text: str) -> tuple[int, ...]:
    """``"Cardiomegaly|Effusion"`` → a 0/1 vector in :data:`FINDINGS` order; ``"No Finding"`` → all zeros."""
    names = [name.strip() for name in text.split("|") if name.strip()]
    if not names:
        raise ValueError("blank; each image lists its findings or 'No Finding'")
    if NO_FINDING in names:
        if len(names) > 1:
            raise ValueError(f"{text.strip()[:80]!r} joins 'No Finding' with findings")
        return (0,) * len(FINDINGS)
    unknown = [name for name in names if name not in _INDEX]
    if unknown:
        raise ValueError(f"{unknown[0][:40]!r} is not one of the 14 findings {list(FINDINGS)} nor 'No Finding'")
    vector = [0] * len(FINDINGS)
    for name in names:
        vector[_INDEX[name]] = 1
    return tuple(vector)


def parse_age(text: str) -> int | None:
    """Years: ``57`` (v2020) or ``058Y`` / ``011M`` / ``020D`` (2017); ``None`` when it is not an age."""
    match = _AGE.match(text)
    if match is None:
        return None
    return int(int(match.group(1)) * _YEARS_PER_UNIT[match.group(2).upper()])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def row_meta(cells: Mapping[str, str], header: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Metadata of one row, and notes for the summary on cells that could not be read (the row is kept)."""
    meta: dict[str, Any] = {}
    notes: list[str] = []
    age_text = cells.get("Patient Age", "")
    meta["age"] = parse_age(age_text)
    if meta["age"] is None and age_text.strip():
        notes.append("NIH rows whose 'Patient Age' is not an age (kept, age null)")
    sex = cells.get("Patient Gender", "").strip().upper()
    meta["sex"] = sex if sex in ("M", "F") else None
    view = cells.get("View Position", "").strip().upper()
    meta["view"] = view or None
    follow_up = cells.get("Follow-up #", "").strip()
    meta["follow_up"] = int(follow_up) if follow_up.isdigit() else None
    if follow_up and not follow_up.isdigit():
        notes.append("NIH rows whose 'Follow-up #' is not a number (kept, follow_up null)")
    # "OriginalImage[Width,Height]" and "...PixelSpacing[x,y]" are two header cells each (a comma in the name)
    for name, first in (("original_size", "OriginalImage[Width"), ("pixel_spacing", "OriginalImagePixelSpacing[x")):
        if first in header:
            at = header.index(first)
            pair = [_number(cells.get(column, "")) for column in header[at : at + 2]]
            if len(pair) != 2 or None in pair:
                meta[name] = None
            else:  # sizes are whole pixels; spacings are millimetres
                meta[name] = [int(v) for v in pair] if name == "original_size" else pair  # type: ignore[arg-type]
    return meta, notes


def parse_box(cells: Mapping[str, str], header: list[str]) -> dict[str, Any]:
    """One row of ``BBox_List_2017.csv``: ``{"finding", "x", "y", "w", "h"}`` in original-image pixels."""
    values = [_number(cells.get(column, "")) for column in header[2:6]]
    if len(values) != 4 or None in values or values[2] <= 0 or values[3] <= 0:  # type: ignore[operator]
        raise ValueError(f"box {[cells.get(c, '') for c in header[2:6]]} is not a positive rectangle")
    x, y, w, h = values
    return {"finding": cells.get("Finding Label", "").strip(), "x": x, "y": y, "w": w, "h": h}
