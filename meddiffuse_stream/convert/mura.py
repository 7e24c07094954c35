"""MURA v1.1: image paths and per-study labels from the official CSVs; the official train/valid split kept."""

from __future__ import annotations

import csv
import io
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..storage import Location
from .base import DEFAULT_RULES, Discovery, ReadRules, Reject, SourceItem
from .files import FileSource, KeyAllocator
from .scan import scan_files, scan_notes

__all__ = ["MuraSource", "parse_mura_path"]

CLASS_NAMES = ["normal", "abnormal"]
_SPLITS = {"train": "train", "valid": "val"}
_PATH = re.compile(
    r"^(?P<root>.*?)(?P<split>train|valid)/XR_(?P<part>[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+)_(?P<tag>positive|negative)/(?P<image>[^/\s\x00-\x1f\x7f]+)",
    re.ASCII,
)


def parse_mura_path(path: str) -> dict[str, Any]:
    """``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png`` → its parts; ValueError if not."""
    match = _PATH.fullmatch(path)  # whole string: a trailing newline or space is not part of a valid path
    if match is None:
        raise ValueError(f"{path!r} is not a MURA image path (<split>/XR_<PART>/patientN/studyN_<tag>/<image>)")
    parts = match.groupdict()
    return {
        "split": _SPLITS[parts["split"]],
        "body_part": parts["part"].lower(),
        "patient_id": parts["patient"],
        "study": parts["study"],
        "image": parts["image"],
        "study_dir": path[: path.rindex("/") + 1],
    }


@dataclass(frozen=True)
class MuraSource(FileSource):
    """SRC is ``MURA-v1.1`` or the folder holding it."""

    name = "mura"
    official_split_help = "MURA-v1.1's train and valid (as val)"

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        scan = scan_files(src, "", rules)
        listing = scan.files
        csv_name = next((p for p in sorted(listing) if p.endswith("train_image_paths.csv")), None)
        if csv_name is None:
            raise ValueError(f"{src.display()}: no train_image_paths.csv found; point SRC at MURA-v1.1")
        folder = posixpath.dirname(csv_name)  # "" or "MURA-v1.1"
        keys = KeyAllocator()
        items, rejects = [], []
        for split in ("train", "valid"):
            labels = self._study_labels(src, posixpath.join(folder, f"{split}_labeled_studies.csv"))
            paths_csv = posixpath.join(folder, f"{split}_image_paths.csv")
            for line in self._read(src, paths_csv).splitlines():
                path = line.strip()
                if not path:
                    continue
                # the CSV paths start with the dataset folder ("MURA-v1.1/"): resolve them beside the CSV
                relative = posixpath.join(folder, path.split("/", 1)[-1])
                try:
                    parsed = parse_mura_path(path)
                except ValueError as error:
                    rejects.append(Reject(path, str(error)))
                    continue
                label = labels.get(parsed["study_dir"])
                if label is None:
                    rejects.append(
                        Reject(path, f"study {parsed['study_dir']} has no row in {split}_labeled_studies.csv")
                    )
                elif relative in scan.refused:
                    rejects.append(Reject(path, scan.refused[relative]))
                elif relative not in listing:
                    rejects.append(Reject(path, "referenced file is missing"))
                else:
                    meta = {k: parsed[k] for k in ("body_part", "study")}
                    stem = posixpath.splitext(parsed["image"])[0]
                    key = keys(path, "mura", split, parsed["body_part"], parsed["patient_id"], parsed["study"], stem)
                    items.append(
                        SourceItem(
                            key,
                            label,
                            path,
                            src.path(relative),
                            parsed["patient_id"],
                            parsed["split"],
                            meta,
                            listing[relative].size,
                            listing[relative].stamp,
                        )
                    )
        return Discovery(CLASS_NAMES, items, rejects, official_splits=True, notes=scan_notes(scan))

    def _read(self, src: Location, relative: str) -> str:
        if not src.exists(relative):
            raise ValueError(f"{src.display(relative)} is missing: MURA-v1.1 needs both train and valid CSVs")
        return src.read_bytes(relative).decode("utf-8-sig")

    def _study_labels(self, src: Location, relative: str) -> dict[str, int]:
        labels: dict[str, int] = {}
        for row in csv.reader(io.StringIO(self._read(src, relative))):
            if len(row) >= 2 and row[1].strip() in ("0", "1"):
                study = row[0].strip()
                labels[study if study.endswith("/") else study + "/"] = int(row[1])
        return labels
