"""RSNA Pneumonia Detection: ``stage_2_train_labels.csv`` plus a folder of DICOMs; boxes become the ROI mask."""

from __future__ import annotations

import argparse
import csv
import io
import math
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..shardfmt.writer import make_key
from ..storage import Location
from .base import DEFAULT_RULES, Discovery, LoadedImage, ReadRules, Reject, RejectError, SourceItem
from .files import FileSource
from .scan import scan_files, scan_notes

__all__ = ["RsnaSource", "parse_rsna_labels", "rasterise_boxes"]

CLASS_NAMES = ["no_pneumonia", "pneumonia"]
Box = tuple[float, float, float, float]


def parse_rsna_labels(text: str) -> tuple[dict[str, tuple[int, list[Box]]], list[Reject]]:
    """``patientId -> (Target, boxes)`` from the label CSV; a patient may have several rows (one per box)."""
    reader = csv.DictReader(io.StringIO(text))
    needed = {"patientId", "x", "y", "width", "height", "Target"}
    if not needed.issubset(reader.fieldnames or []):
        raise ValueError(f"label CSV header {reader.fieldnames} lacks {sorted(needed - set(reader.fieldnames or []))}")
    targets: dict[str, set[int]] = defaultdict(set)
    boxes: dict[str, list[Box]] = defaultdict(list)
    bad: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        patient = row["patientId"].strip()
        try:
            target = int(row["Target"])
            if target not in (0, 1):
                raise ValueError(f"Target {target} is not 0 or 1")
            targets[patient].add(target)
            if target == 1:
                box = tuple(float(row[c]) for c in ("x", "y", "width", "height"))
                if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
                    raise ValueError(f"box {box} is not a positive finite rectangle")
                boxes[patient].append(box)  # type: ignore[arg-type]
        except ValueError as error:
            bad.setdefault(patient, f"label CSV line {line}: {error}")
    labels: dict[str, tuple[int, list[Box]]] = {}
    rejects: list[Reject] = []
    for patient, found in targets.items():
        if patient in bad:
            continue
        if len(found) > 1:
            bad[patient] = "label CSV gives this patient both Target 0 and Target 1"
        else:
            labels[patient] = (found.pop(), boxes.get(patient, []))
    rejects = [Reject(f"{patient}.dcm", reason) for patient, reason in sorted(bad.items())]
    return labels, rejects


def rasterise_boxes(boxes: list[Box], height: int, width: int) -> np.ndarray:
    """A uint8 mask, 1 inside any box (pixel coordinates, clipped to the image)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
        x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
        mask[y0:y1, x0:x1] = 1
    return mask


@dataclass(frozen=True)
class RsnaSource(FileSource):
    """SRC holds the label CSV and the DICOM folder (``stage_2_train_images`` unless told otherwise)."""

    name = "rsna"
    labels_csv: str = "stage_2_train_labels.csv"
    images_dir: str = "stage_2_train_images"

    @classmethod
    def add_cli_options(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--labels-csv", default="stage_2_train_labels.csv", help="rsna: label CSV below SRC")
        group.add_argument("--images-dir", default="stage_2_train_images", help="rsna: DICOM folder below SRC")

    @classmethod
    def cli_fields(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**super().cli_fields(args), "labels_csv": args.labels_csv, "images_dir": args.images_dir}

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if not src.exists(self.labels_csv):
            raise ValueError(f"{src.display(self.labels_csv)} is missing: point SRC at the RSNA folder")
        labels, rejects = parse_rsna_labels(src.read_bytes(self.labels_csv).decode("utf-8-sig"))
        scan = scan_files(src, self.images_dir, rules)
        images = {posixpath.basename(p): (p, f) for p, f in scan.files.items()}
        refused = {posixpath.basename(p): (p, reason) for p, reason in scan.refused.items()}
        items: list[SourceItem] = []
        for patient, (target, boxes) in sorted(labels.items()):
            name = f"{patient}.dcm"
            if name in refused:
                rejects.append(Reject(*refused[name]))
                continue
            if name not in images:
                rejects.append(Reject(posixpath.join(self.images_dir, name), "referenced file is missing"))
                continue
            path, found = images[name]
            meta = {"boxes": [list(b) for b in boxes]}
            key = make_key("rsna", patient)
            items.append(SourceItem(key, target, path, src.path(path), patient, None, meta, found.size, found.stamp))
        labelled = {f"{p}.dcm" for p in labels} | {r.source.split("/")[-1] for r in rejects}
        unlabelled = sorted(set(images) - labelled)
        rejects += [Reject(images[n][0], "no row in the label CSV for this image") for n in unlabelled]
        rejects += [Reject(*refused[n]) for n in sorted(set(refused) - labelled)]
        return Discovery(CLASS_NAMES, items, rejects, has_roi=True, notes=scan_notes(scan))

    def load_one(self, src: Location, item: SourceItem, rules: ReadRules = DEFAULT_RULES) -> LoadedImage:
        loaded = super().load_one(src, item, rules)
        if loaded.image.ndim != 2 and rules.channels != 1:
            raise RejectError(
                f"expected a grey radiograph, got shape {loaded.image.shape}; "
                "--channels 1 converts colour files to grey"
            )
        loaded.roi = rasterise_boxes([tuple(b) for b in item.meta["boxes"]], *loaded.image.shape[:2])
        return loaded
