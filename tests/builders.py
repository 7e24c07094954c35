"""Small copies of each dataset's real layout, written into temporary folders by the tests."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def noise_image(rng: np.random.Generator, height: int, width: int, channels: int = 0, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(0, top + 1, shape, dtype=np.int64).astype(dtype)


def make_imagefolder(root: Path, counts: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for class_name, count in counts.items():
        for index in range(count):
            write_image(root / class_name / f"img{index:03d}.png", noise_image(rng, size, size))
    return root


BREAKHIS_TYPES = {"A": "adenosis", "F": "fibroadenoma", "DC": "ductal_carcinoma", "LC": "lobular_carcinoma"}


def make_breakhis(root: Path, patients: int = 6, per_magnification: int = 2, seed: int = 0) -> Path:
    """``BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<type>/SOB_<B|M>_<T>_<id>/<mag>X/*.png``."""
    rng = np.random.default_rng(seed)
    base = root / "BreaKHis_v1" / "histology_slides" / "breast"
    codes = list(BREAKHIS_TYPES)
    for patient in range(patients):
        code = codes[patient % len(codes)]
        kind = "B" if code in ("A", "F") else "M"
        slide = f"{22549 + patient}AB"
        folder = base / ("benign" if kind == "B" else "malignant") / "SOB" / BREAKHIS_TYPES[code]
        folder = folder / f"SOB_{kind}_{code}_14-{slide}"
        for magnification in (40, 100):
            for sequence in range(1, per_magnification + 1):
                name = f"SOB_{kind}_{code}-14-{slide}-{magnification}-{sequence:03d}.png"
                write_image(folder / f"{magnification}X" / name, noise_image(rng, 23, 35, 3))
    return root / "BreaKHis_v1"


def make_mura(root: Path, seed: int = 0) -> Path:
    """MURA-v1.1 with the four official CSVs; two patients in train, one in valid."""
    rng = np.random.default_rng(seed)
    mura = root / "MURA-v1.1"
    layout = {
        "train": [("XR_SHOULDER", "patient00001", "study1", 1, 2), ("XR_WRIST", "patient00002", "study1", 0, 1)],
        "valid": [("XR_ELBOW", "patient11185", "study1", 1, 2)],
    }
    for split, studies in layout.items():
        image_rows, study_rows = [], []
        for part, patient, study, label, images in studies:
            tag = "positive" if label else "negative"
            study_dir = f"MURA-v1.1/{split}/{part}/{patient}/{study}_{tag}/"
            study_rows.append([study_dir, str(label)])
            for index in range(1, images + 1):
                relative = f"{study_dir}image{index}.png"
                image_rows.append(relative)
                write_image(root / relative, noise_image(rng, 30, 20))
        mura.mkdir(parents=True, exist_ok=True)
        (mura / f"{split}_image_paths.csv").write_text("".join(f"{r}\n" for r in image_rows))
        with open(mura / f"{split}_labeled_studies.csv", "w", newline="") as stream:
            csv.writer(stream).writerows(study_rows)
    return mura


def make_pcam(root: Path, rows: dict[str, int] | None = None, seed: int = 0) -> Path:
    import h5py

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (rows or {"train": 20, "valid": 6, "test": 6}).items():
        prefix = root / f"camelyonpatch_level_2_split_{split}"
        with h5py.File(f"{prefix}_x.h5", "w") as handle:
            handle.create_dataset("x", data=noise_image(rng, count * 96, 96, 3).reshape(count, 96, 96, 3), chunks=True)
        with h5py.File(f"{prefix}_y.h5", "w") as handle:
            handle.create_dataset("y", data=rng.integers(0, 2, (count, 1, 1, 1), dtype=np.uint8))
    return root


def real_rsna_label_csv() -> str:
    """The real ``stage_2_train_labels.csv`` (30,227 rows) shipped inside the torchxrayvision wheel."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchxrayvision (test data only) is missing: make setup installs it with --no-deps")
    archive = os.path.join(spec.submodule_search_locations[0], "data", "kaggle_stage_2_train_labels.csv.zip")
    with zipfile.ZipFile(archive) as bundle:
        return bundle.read(bundle.namelist()[0]).decode()


def rsna_subset(positives: int, negatives: int) -> tuple[str, list[str]]:
    """The real CSV's header and every row of the first patients of each class (several rows per positive)."""
    reader = list(csv.reader(io.StringIO(real_rsna_label_csv())))
    header, rows = reader[0], reader[1:]
    positive: list[str] = []
    negative: list[str] = []
    for row in rows:
        bucket, wanted = (positive, positives) if row[5] == "1" else (negative, negatives)
        if row[0] not in bucket and len(bucket) < wanted:
            bucket.append(row[0])
    chosen = positive + negative
    lines = [",".join(header)] + [",".join(r) for r in rows if r[0] in chosen]
    return "\n".join(lines) + "\n", chosen


def small_dicom(name: str, size: int | None = None, **changes):
    """A real DICOM from pydicom's data, optionally downsampled (uncompressed) so tests stay fast."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    if size is not None:
        pixels = ds.pixel_array
        step = max(1, min(pixels.shape) // size)
        small = np.ascontiguousarray(pixels[::step, ::step][:size, :size])
        ds.Rows, ds.Columns = small.shape
        ds.PixelData = small.tobytes()
    for attribute, value in changes.items():
        setattr(ds, attribute, value)
    return ds
