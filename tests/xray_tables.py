"""Real chest X-ray label tables (NIH ChestX-ray14, CheXpert) laid out as the datasets ship, with generated pixels.

The tables ship inside the ``torchxrayvision`` wheel that ``make setup`` installs (``--no-deps``); nothing is
downloaded. Rows are drawn whole patients at a time, so the tests meet the real patient structure (follow-ups,
several studies and views per patient). Each image's pixels are a function of its file name, so a read-back can
check that image and label still belong together.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

NIH_TABLE = "Data_Entry_2017_v2020.csv.gz"
NIH_BOXES = "BBox_List_2017.csv.gz"
CHEXPERT_TABLE = "chexpert_train.csv.gz"


def table_path(name: str) -> Path:
    """A table from the installed wheel's ``data/`` folder; the test is skipped, saying why, when it is absent."""
    spec = importlib.util.find_spec("torchxrayvision")  # finds the package without importing it (or torch)
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision is not installed: make setup installs it (--no-deps) for its real label tables")
    path = Path(spec.origin).parent / "data" / name
    if not path.exists():
        pytest.skip(f"{path} is absent from this torchxrayvision wheel")
    return path


def read_rows(name: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a bundled table."""
    text = gzip.decompress(table_path(name).read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def rows_of_patients(rows: list[list[str]], patient_of, count: int, seed: int) -> list[list[str]]:
    """At least ``count`` rows, whole patients at a time, patients in a seeded order; table order kept."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_patient[patient_of(row)].append(index)
    patients = sorted(by_patient)
    chosen: list[int] = []
    for position in np.random.default_rng(seed).permutation(len(patients)):
        if len(chosen) >= count:
            break
        chosen.extend(by_patient[patients[position]])
    return [rows[i] for i in sorted(chosen)]


def pixels_of(name: str, size: int = 12) -> np.ndarray:
    """The generated grey image of the file called ``name`` (seeded by the name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


def write_grey(path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels_of(path.name)).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def nih_patient(row: list[str]) -> str:
    return row[3]


def make_nih(root: Path, header: list[str], table_rows: list[list[str]], images: list[list[str]]) -> Path:
    """``root/Data_Entry_2017_v2020.csv`` with ``table_rows``, and a PNG for each of ``images`` in the release's
    ``images_NNN/images/`` folders (the release cuts them at about 10,000 images by file-name order)."""
    write_csv(root / "Data_Entry_2017_v2020.csv", header, table_rows)
    for row in images:
        folder = 1 + (int(row[0].split("_")[0]) * 12) // 30806
        write_grey(root / f"images_{folder:03d}" / "images" / row[0])
    return root


def chexpert_patient(row: list[str]) -> str:
    return row[0].split("/")[2]


def as_valid(rows: list[list[str]], first_patient: int = 64541) -> list[list[str]]:
    """Rows moved to ``valid/`` under new patient numbers (the release's valid patients follow train's), the way
    ``valid.csv`` is laid out; uncertain cells become 0 (the valid set is labelled by radiologists, not the
    labeller)."""
    numbers: dict[str, str] = {}
    moved = []
    for row in rows:
        patient = chexpert_patient(row)
        numbers.setdefault(patient, f"patient{first_patient + len(numbers):05d}")
        parts = row[0].split("/")
        path = "/".join([parts[0], "valid", numbers[patient], *parts[3:]])
        moved.append([path, *row[1:5], *("0.0" if v == "-1.0" else v for v in row[5:])])
    return moved


def make_chexpert(root: Path, header: list[str], train: list[list[str]], valid: list[list[str]]) -> Path:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` and a JPEG for every row, where the CSV's ``Path`` says."""
    folder = root / "CheXpert-v1.0-small"
    write_csv(folder / "train.csv", header, train)
    write_csv(folder / "valid.csv", header, valid)
    for row in [*train, *valid]:
        write_grey(root / row[0], "JPEG")
    return folder
