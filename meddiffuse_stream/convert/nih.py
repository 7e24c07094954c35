"""NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``) and the PNGs anywhere below SRC.

The release ships its 112,120 images in ``images_001/images/`` … ``images_012/images/``; an image is found by its
name (``00000001_000.png``) wherever it lies, in one scan of SRC. Patient = ``Patient ID``; a row's findings become
a 14-finding vector (``No Finding``: all negative, all known); age, sex, view, follow-up, original size and pixel
spacing, and the boxes of ``BBox_List_2017.csv`` where present, go into the sample's metadata. ``--split
official`` keeps ``test_list.txt`` as test and divides ``train_val_list.txt`` into train and val by patient.
"""

from __future__ import annotations

import argparse
import dataclasses
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..shardfmt.writer import make_key
from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .csv_rows import ManifestRow, parse_manifest
from .files import FileSource
from .label_tables import ImagesByName, find_table, read_table
from .nih_rows import FINDINGS, parse_box, parse_findings, row_meta
from .scan import FileScan, scan_files, scan_notes
from .splits import assign_splits

__all__ = ["NihSource"]

TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BOX_TABLE = "BBox_List_2017.csv"
TEST_LIST, TRAIN_VAL_LIST = "test_list.txt", "train_val_list.txt"
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


@dataclass(frozen=True)
class NihSource(FileSource):
    """SRC holds the label table and the image folders (as extracted from the release, or any tree below it)."""

    name = "nih"
    official_split_help = "test_list.txt as test; train_val_list.txt divided into train and val by patient"
    official: bool = False
    val_fraction: float = 0.1  # with --split official: the share of train_val_list.txt's patients kept for val
    seed: int = 0

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--val-fraction",
            type=float,
            default=0.1,
            help="nih --split official: share of train_val_list.txt's patients kept for val",
        )

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        official = getattr(args, "split", None) == "official"
        fields = {"official": official, "val_fraction": args.val_fraction, "seed": args.seed}
        return {**super().cli_fields(args), **fields}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must lie between 0 and 1, got {self.val_fraction}")
        scan = scan_files(src, "", rules)
        table = find_table(scan.files, TABLES)
        if table is None:
            raise ValueError(
                f"{src.display()}: no {' or '.join(TABLES)} found; point SRC at the ChestX-ray14 folder holding "
                "the label table and the images_NNN folders"
            )
        where = src.display(table)
        header, rows = parse_manifest(read_table(src, table), "utf-8", where, _REQUIRED)
        images = ImagesByName.of(scan, (".png",))
        boxes, notes = self._boxes(src, scan)
        items: list[SourceItem] = []
        rejects = list(images.rejects)
        seen: dict[str, int] = {}
        for row in rows:
            name = row.cells.get("Image Index", "").strip()
            source = name or f"{table}:{row.line}"
            problem = f"{row.problem} (in {table})" if row.problem else self._row_problem(row, name, seen, table)
            if name:  # an image with a row, good or bad, is that row's: never rejected a second time as unlisted
                seen.setdefault(name, row.line)
            if problem is None:
                try:
                    findings = parse_findings(row.cells["Finding Labels"])
                except ValueError as error:
                    problem = f"line {row.line}: column 'Finding Labels' of {table}: {error}"
            if problem is not None:
                rejects.append(Reject(source, problem))
                continue
            if name in images.refused:
                rejects.append(Reject(*images.refused[name]))
                continue
            if name not in images.found:
                rejects.append(Reject(name, "image not found below SRC (not downloaded or not extracted yet?)"))
                continue
            path, found = images.found[name]
            meta, row_notes = row_meta(row.cells, header)
            notes.update(row_notes)
            if name in boxes:
                meta["boxes"] = boxes[name]
            patient = f"{int(row.cells['Patient ID']):08d}"
            key = make_key("nih", posixpath.splitext(name)[0])
            items.append(
                SourceItem(key, -1, path, src.path(path), patient, None, meta, found.size, found.stamp, findings)
            )
        listed = set(seen)
        rejects += [Reject(path, f"no row in {table}") for n, (path, _) in images.found.items() if n not in listed]
        notes.update(scan_notes(scan))
        unused = sum(1 for name in boxes if name not in listed)
        if unused:
            notes[f"{BOX_TABLE} boxes of images without a row (not used)"] = unused
        if self.official:
            items, split_rejects = self._official_splits(src, scan, items)
            rejects += split_rejects
        return Discovery(
            list(FINDINGS),
            items,
            rejects,
            official_splits=self.official,
            notes=dict(notes),
            task="multi_label",
        )

    @staticmethod
    def _row_problem(row: ManifestRow, name: str, seen: dict[str, int], table: str) -> str | None:
        """Why a row of the table is unusable (its line, column and table named), or ``None``."""
        if not name:
            problem = "column 'Image Index' of {}: blank"
        elif name in seen:
            problem = f"column 'Image Index' of {{}}: {name} is listed again (first on line {seen[name]})"
        else:
            patient = row.cells.get("Patient ID", "").strip()
            prefix = name.split("_", 1)[0]
            if not patient.isdigit():
                problem = f"column 'Patient ID' of {{}}: {patient[:20]!r} is not a number"
            elif prefix.isdigit() and int(prefix) != int(patient):
                problem = f"column 'Patient ID' of {{}}: {patient}, but the image name says patient {int(prefix)}"
            else:
                return None
        return f"line {row.line}: " + problem.format(table)

    @staticmethod
    def _boxes(src: Location, scan: FileScan) -> tuple[dict[str, list[dict[str, Any]]], Counter[str]]:
        """Boxes by image name from ``BBox_List_2017.csv`` where it lies below SRC (rows it cannot read counted)."""
        notes: Counter[str] = Counter()
        table = find_table(scan.files, (BOX_TABLE,))
        if table is None:
            return {}, notes
        header, rows = parse_manifest(read_table(src, table), "utf-8", src.display(table), ("Image Index",))
        boxes: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            try:
                if row.problem is not None:
                    raise ValueError(row.problem)
                box = parse_box(row.cells, header)
            except ValueError:
                notes[f"{BOX_TABLE} rows that are not a box (not used)"] += 1
                continue
            boxes.setdefault(row.cells["Image Index"].strip(), []).append(box)
        return boxes, notes

    def _official_splits(
        self, src: Location, scan: FileScan, items: list[SourceItem]
    ) -> tuple[list[SourceItem], list[Reject]]:
        """Test from ``test_list.txt``; ``train_val_list.txt`` into train and val, whole patients at a time."""
        lists = {}
        for split, name in (("test", TEST_LIST), ("train_val", TRAIN_VAL_LIST)):
            path = find_table(scan.files, (name,))
            if path is None:
                raise ValueError(
                    f"--split official: {name} is not below {src.display()}; it ships with the release "
                    "(or leave --split out for a patient-level split by fractions)"
                )
            text = read_table(src, path).decode("utf-8-sig", errors="replace")
            lists[split] = {line.strip() for line in text.splitlines() if line.strip()}
        listed: list[SourceItem] = []
        rejects: list[Reject] = []
        for item in items:
            name = posixpath.basename(item.source)
            listed_in = "test" if name in lists["test"] else "train_val" if name in lists["train_val"] else None
            if listed_in is None:
                rejects.append(Reject(item.source, f"in neither {TEST_LIST} nor {TRAIN_VAL_LIST} (--split official)"))
            else:
                listed.append(dataclasses.replace(item, split=listed_in))
        fractions = {"train": 1 - self.val_fraction, "val": self.val_fraction}
        carved = assign_splits([i for i in listed if i.split == "train_val"], fractions, self.seed)
        return [dataclasses.replace(i, split=carved.get(i.key, i.split)) for i in listed], rejects
