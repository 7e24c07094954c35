"""MIMIC-CXR-JPG as a csv manifest for ``meddiffuse-stream shard csv``: one row per image, its study's labels.

MIMIC-CXR-JPG labels studies, not images: ``mimic-cxr-2.0.0-chexpert.csv`` (``subject_id``, ``study_id``, the 14
observations of the CheXpert labeller: 1 / 0 / -1 / blank) is joined on ``study_id`` with
``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition``, …); each image lies
at ``files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg``. The release's ``-split.csv`` is kept as a
column (``mimic_split``) for reference; the conversion splits by patient (``subject_id``) with ``--split`` fractions.

    python tools/mimic_manifest.py MIMIC_ROOT MIMIC_ROOT/manifest.csv [--views PA,AP]
    meddiffuse-stream shard csv MIMIC_ROOT/manifest.csv OUT --blank-label negative --uncertain ignore \\
        --label-columns "$(python tools/mimic_manifest.py --columns)"

A study without a label row, or an image whose study has none, is written nowhere and counted on stderr.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import posixpath
import sys
from pathlib import Path

OBSERVATIONS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
TABLES = {
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv",
    "metadata": "mimic-cxr-2.0.0-metadata.csv",
    "split": "mimic-cxr-2.0.0-split.csv",
}


def _table(root: Path, name: str, required: bool = True) -> list[dict[str, str]] | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            data = candidate.read_bytes()
            text = (gzip.decompress(data) if candidate.suffix == ".gz" else data).decode("utf-8-sig")
            return list(csv.DictReader(io.StringIO(text)))
    if required:
        raise SystemExit(f"{root / name} (or .gz) is missing: point MIMIC_ROOT at the MIMIC-CXR-JPG folder")
    return None


def build_manifest(
    root: Path, views: set[str] | None = None, prefix: str = ""
) -> tuple[list[list[str]], dict[str, int]]:
    """Manifest rows (paths ``prefix/files/...``: relative to where the manifest is written) and counts of what
    was left out and why."""
    chexpert = _table(root, TABLES["chexpert"])
    metadata = _table(root, TABLES["metadata"])
    split_rows = _table(root, TABLES["split"], required=False) or []
    assert chexpert is not None and metadata is not None
    labels = {row["study_id"]: row for row in chexpert}
    splits = {row["dicom_id"]: row["split"] for row in split_rows}
    rows, skipped = [], {"images whose study has no label row": 0, "images of other views (--views)": 0}
    for image in metadata:
        study, subject = image["study_id"], image["subject_id"]
        view = image.get("ViewPosition", "")
        if views is not None and view not in views:
            skipped["images of other views (--views)"] += 1
            continue
        label = labels.get(study)
        if label is None:
            skipped["images whose study has no label row"] += 1
            continue
        path = posixpath.join(prefix, f"files/p{subject[:2]}/p{subject}/s{study}/{image['dicom_id']}.jpg")
        cells = [label.get(name, "") for name in OBSERVATIONS]
        rows.append([path, subject, study, view, splits.get(image["dicom_id"], ""), *cells])
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="the MIMIC-CXR-JPG folder (holding files/ and the tables)")
    parser.add_argument("out", nargs="?", help="the manifest to write, e.g. ROOT/manifest.csv")
    parser.add_argument("--views", help="keep these ViewPosition values only, e.g. PA,AP")
    parser.add_argument("--columns", action="store_true", help="print the --label-columns value and stop")
    args = parser.parse_args(argv)
    if args.columns:
        print(",".join(OBSERVATIONS))
        return 0
    if not args.root or not args.out:
        parser.error("ROOT and OUT are required")
    views = {v.strip() for v in args.views.split(",")} if args.views else None
    out = Path(args.out)
    prefix = Path(os.path.relpath(Path(args.root).resolve(), out.resolve().parent)).as_posix()
    rows, skipped = build_manifest(Path(args.root), views, "" if prefix == "." else prefix)
    with out.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["path", "patient_id", "study_id", "view", "mimic_split", *OBSERVATIONS])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")
    for reason, count in skipped.items():
        if count:
            print(f"left out {count}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
