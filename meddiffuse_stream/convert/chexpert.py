"""CheXpert: ``train.csv`` / ``valid.csv`` of ``CheXpert-v1.0`` (or ``-small``) and the JPEGs they name.

Each CSV row is an image (``Path``, ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA``, then 14 observations). An
observation is 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned in the report: negative and
known, as the labeller's authors read it). ``--uncertain`` decides -1: ``ignore`` leaves it unknown (masked out of
the loss), ``ones`` / ``zeros`` make it positive / negative (the U-Ones / U-Zeros of the CheXpert paper). The
patient is the ``patientNNNNN`` folder; ``--split official`` keeps ``train.csv`` as train and ``valid.csv`` as val.
"""

from __future__ import annotations

import argparse
import operator
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..shardfmt.writer import make_key
from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .csv_rows import ManifestRow, parse_manifest
from .files import FileSource
from .label_tables import UNCERTAIN_POLICIES, finding_value, finding_values, read_table
from .scan import FileScan, scan_files, scan_notes

__all__ = ["OBSERVATIONS", "CheXpertSource", "image_path"]

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CSVS = {"train.csv": "train", "valid.csv": "val"}
_SPLIT_FOLDERS = ("train", "valid", "test")
_IMAGE = re.compile(r"^(?:train|valid|test)/(patient\d+)/(study\d+)/(view\d+_(?:frontal|lateral))\.(?:jpe?g|png)$")
_SUFFIXES = (".jpg", ".jpeg", ".png")
_CELLS = operator.itemgetter(*OBSERVATIONS)  # the 14 cells of a row in one C call


def image_path(path: str) -> str:
    """A CSV's ``Path`` below SRC: its first folder is the dataset's own (``CheXpert-v1.0-small/``), dropped so a
    renamed or moved folder still resolves; a path that starts at ``train/`` is taken as it is."""
    path = path.strip().lstrip("/")
    first, _, rest = path.partition("/")
    return path if first in _SPLIT_FOLDERS or not rest else rest


@dataclass(frozen=True)
class CheXpertSource(FileSource):
    """SRC is the ``CheXpert-v1.0[-small]`` folder holding ``train.csv`` and ``valid.csv``."""

    name = "chexpert"
    official_split_help = "train.csv as train and valid.csv as val"
    uncertain: str = "ignore"
    official: bool = False

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--uncertain",
            choices=UNCERTAIN_POLICIES,
            default="ignore",
            help="chexpert, csv --label-columns: what -1 (uncertain) becomes: ignore = unknown, masked out of the "
            "loss; ones = positive; zeros = negative",
        )

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        official = getattr(args, "split", None) == "official"
        return {**super().cli_fields(args), "uncertain": args.uncertain, "official": official}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {self.uncertain!r}")
        present = [name for name in CSVS if src.exists(name)]
        if not present or (self.official and len(present) < len(CSVS)):
            wanted = " and ".join(CSVS) if self.official else " or ".join(CSVS)
            raise ValueError(
                f"{src.display()}: no {wanted} found; point SRC at the CheXpert-v1.0 (or -small) folder holding them"
            )
        scan = scan_files(src, "", rules)
        images = {p: f for p, f in scan.files.items() if p.lower().endswith(_SUFFIXES)}
        items: list[SourceItem] = []
        rejects: list[Reject] = []
        listed: dict[str, str] = {}  # image path -> "train.csv line N"
        values = finding_values(blank=0, uncertain=self.uncertain)
        for csv_name in present:
            header, rows = parse_manifest(read_table(src, csv_name), "utf-8", src.display(csv_name), ("Path",))
            missing = [name for name in OBSERVATIONS if name not in header]
            if missing:
                raise ValueError(
                    f"{src.display(csv_name)}: header lacks the observation column(s) {missing}; expected the "
                    "published layout: Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations"
                )
            for row in rows:
                result = self._item(src, scan, images, row, csv_name, listed, values)
                if isinstance(result, SourceItem):
                    items.append(result)
                else:
                    rejects.append(result)
        rejects += [Reject(p, "no row in train.csv or valid.csv") for p in images if p not in listed]
        return Discovery(
            list(OBSERVATIONS),
            items,
            rejects,
            official_splits=self.official,
            notes=scan_notes(scan),
            task="multi_label",
        )

    def _item(
        self,
        src: Location,
        scan: FileScan,
        images: dict[str, Any],
        row: ManifestRow,
        csv_name: str,
        listed: dict[str, str],
        values: dict[str, int],
    ) -> SourceItem | Reject:
        """One CSV row as an item, or the reject naming its line, column and what is wrong."""
        text = row.cells.get("Path", "").strip()
        source = text or f"{csv_name}:{row.line}"
        where = f"line {row.line}: column {{!r}} of {csv_name}"
        if row.problem is not None:
            return Reject(source, f"{row.problem} (in {csv_name})")
        path = image_path(text)
        match = _IMAGE.match(path)
        if match is None:
            return Reject(
                source, where.format("Path") + ": expected <folder>/train|valid/patientN/studyN/viewN_frontal.jpg"
            )
        if path in listed:
            return Reject(source, where.format("Path") + f": listed again (first on {listed[path]})")
        listed[path] = f"{csv_name} line {row.line}"
        if path in scan.refused:
            return Reject(path, scan.refused[path])
        if path not in images:
            return Reject(source, "image not found below SRC (not downloaded or not extracted yet?)")
        findings = list(map(values.get, _CELLS(row.cells)))
        for index, value in enumerate(findings):
            if value is None:
                name = OBSERVATIONS[index]
                try:
                    findings[index] = finding_value(row.cells[name], blank=0, uncertain=self.uncertain)
                except ValueError as error:
                    return Reject(source, where.format(name) + f": {error}")
        patient, study, view = match.groups()
        age = row.cells.get("Age", "").strip()
        sex = row.cells.get("Sex", "").strip()
        meta = {
            "age": int(age) if age.isdigit() else None,
            "sex": sex if sex in ("Female", "Male") else None,
            "frontal_lateral": row.cells.get("Frontal/Lateral", "").strip() or None,
            "ap_pa": row.cells.get("AP/PA", "").strip() or None,
            "study": study,
            "view": view,
        }
        found = images[path]
        key = make_key("chexpert", posixpath.splitext(path)[0].replace("/", "_"))
        split = CSVS[csv_name] if self.official else None
        return SourceItem(key, -1, path, src.path(path), patient, split, meta, found.size, found.stamp, tuple(findings))  # type: ignore[arg-type]
