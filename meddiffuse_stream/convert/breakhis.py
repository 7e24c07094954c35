"""BreakHis (``BreaKHis_v1``): label, tumour subtype, magnification and patient parsed from each file name."""

from __future__ import annotations

import argparse
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .files import IMAGE_SUFFIXES, FileSource, KeyAllocator
from .scan import scan_files, scan_notes

__all__ = ["BINARY_CLASSES", "SUBTYPES", "BreakHisSource", "parse_breakhis_name"]

BINARY_CLASSES = ["benign", "malignant"]
SUBTYPES = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
_BENIGN = {"A", "F", "PT", "TA"}
_NAME = re.compile(
    r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]{1,2})-(?P<year>\d{2})-(?P<slide>[0-9A-Za-z]+)"
    r"-(?P<magnification>40|100|200|400)-(?P<sequence>\d{3})\.png",
    re.ASCII,
)


def parse_breakhis_name(filename: str) -> dict[str, Any]:
    """``SOB_B_A-14-22549AB-40-001.png`` → kind, subtype, patient, magnification, sequence; ValueError if not."""
    match = _NAME.fullmatch(filename)  # whole name, ASCII digits: "…-001.png\n" or Arabic-Indic digits are refused
    if match is None:
        raise ValueError(
            f"file name {filename!r} does not follow the BreakHis pattern SOB_<B|M>_<type>-<yy>-<slide>-<mag>-<nnn>.png"
        )
    parts = match.groupdict()
    subtype = parts["subtype"]
    if subtype not in SUBTYPES:
        raise ValueError(f"file name {filename!r}: unknown tumour type {subtype!r} (known: {sorted(SUBTYPES)})")
    if (parts["kind"] == "B") != (subtype in _BENIGN):
        raise ValueError(f"file name {filename!r}: type {subtype!r} contradicts class {parts['kind']!r}")
    return {
        "malignant": parts["kind"] == "M",
        "subtype": SUBTYPES[subtype],
        "patient_id": f"{parts['year']}-{parts['slide']}",
        "magnification": int(parts["magnification"]),
        "sequence": int(parts["sequence"]),
    }


@dataclass(frozen=True)
class BreakHisSource(FileSource):
    """``label="binary"`` (benign / malignant) or ``"subtype"`` (the eight tumour types)."""

    name = "breakhis"
    label: str = "binary"
    magnifications: tuple[int, ...] | None = None  # only these become inputs, e.g. (40,)

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--label", default="binary", choices=["binary", "subtype"], help="breakhis: label to use")
        group.add_argument("--magnification", help="breakhis: only these magnifications, e.g. 40,100")

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        mags = tuple(int(m) for m in args.magnification.split(",")) if args.magnification else None
        return {**super().cli_fields(args), "label": args.label, "magnifications": mags}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if self.label not in ("binary", "subtype"):
            raise ValueError(f"--label must be binary or subtype, got {self.label!r}")
        class_names = BINARY_CLASSES if self.label == "binary" else list(SUBTYPES.values())
        scan = scan_files(src, "", rules)
        files = {p: f for p, f in scan.files.items() if p.lower().endswith(IMAGE_SUFFIXES)}
        refused = {p: r for p, r in scan.refused.items() if p.lower().endswith(IMAGE_SUFFIXES)}
        if not any(posixpath.basename(p).startswith("SOB_") for p in (*files, *refused)):
            raise ValueError(f"{src.display()}: no BreakHis images (SOB_*.png) found; point SRC at BreaKHis_v1")
        keys = KeyAllocator()
        items: list[SourceItem] = []
        rejects = [Reject(path, reason) for path, reason in sorted(refused.items())]
        for path, found in files.items():
            try:
                parsed = parse_breakhis_name(posixpath.basename(path))
            except ValueError as error:
                rejects.append(Reject(path, str(error)))
                continue
            if self.magnifications and parsed["magnification"] not in self.magnifications:
                continue
            label = int(parsed["malignant"]) if self.label == "binary" else class_names.index(parsed["subtype"])
            meta = {k: parsed[k] for k in ("subtype", "magnification")}
            key = keys(path, "breakhis", posixpath.splitext(posixpath.basename(path))[0])
            items.append(
                SourceItem(key, label, path, src.path(path), parsed["patient_id"], None, meta, found.size, found.stamp)
            )
        return Discovery(class_names, items, rejects, notes=scan_notes(scan))
