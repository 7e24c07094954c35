"""The real source scans of the shortcut phantom: every distinct anatomical image the installed packages ship.

``pydicom`` and ``pydicom-data`` ship ~150 test DICOMs; many are one image in several transfer syntaxes, some are
test patterns, a face photograph or a segmentation. 22 distinct real scans are among them (checked by eye and by
thumbnail correlation < 0.95 between any two); :data:`SCANS` lists the 13 CT, MR and CR ones, each once, by the
file that decodes with the default codecs, and :data:`LEFT_OUT` the nuclear-medicine and ultrasound ones, and why.
A folder of further scans (``extra``: DICOM or 8/16-bit PNG files, one
scan each) adds to them. A folder written by ``tools/fetch_scans.py`` (it holds ``scans.json``: 45 scans in 42
independent groups from pinned PyPI and npm archives, pydicom's and pydicom-data's among them) replaces them: its
scans of :data:`FETCHED_FAMILIES` are the backgrounds. A *group* (one patient or acquisition as far as can be told)
is the unit of the phantom's splits: no group is in two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FETCHED_FAMILIES", "LEFT_OUT", "SCANS", "Scan", "available_scans", "fetched_scans", "load_scan"]

# name -> (pydicom test file, modality)
SCANS: dict[str, tuple[str, str]] = {
    "ct_head_693": ("693_UNCR.dcm", "ct"),
    "ct_small": ("CT_small.dcm", "ct"),
    "ct_head_j2k": ("J2K_pixelrep_mismatch.dcm", "ct"),
    "ct_abdomen_seq": ("bad_sequence.dcm", "ct"),
    "ct_enhanced": ("eCT_Supplemental.dcm", "ct"),
    "ct_vr_un": ("explicit_VR-UN.dcm", "ct"),
    "mr_shoulder": ("MR2_UNCR.dcm", "mr"),
    "mr_small": ("MR_small.dcm", "mr"),
    "mr_brain_emri": ("emri_small.dcm", "mr"),
    "mr_abdomen_siemens": ("MR-SIEMENS-DICOM-WithOverlays.dcm", "mr"),
    "mr_overlay": ("examples_overlay.dcm", "mr"),
    "cr_chest": ("RG1_UNCR.dcm", "cr"),
    "cr_extremity": ("RG3_UNCR.dcm", "cr"),
}
# distinct real scans left out: speckle, hot spots and burnt-in text look like the phantom's lesions, and with them a
# CPU teacher did not learn the task in ~600 steps (val AUC 0.62 with all 22 scans, 0.52 with a weaker lesion)
LEFT_OUT: dict[str, tuple[str, str]] = {
    "nm_bone": ("JPEG-LL.dcm", "nm"),
    "us_echo_p14": ("JPGLosslessP14SV1_1s_1f_8b.dcm", "us"),
    "us_ob": ("OBXXXX1A.dcm", "us"),
    "us_us1": ("US1_UNCR.dcm", "us"),
    "us_colour_pl": ("color-pl.dcm", "us"),
    "us_colour3d": ("color3d_jpeg_baseline.dcm", "us"),
    "us_palette": ("examples_palette.dcm", "us"),
    "us_ybr": ("examples_ybr_color.dcm", "us"),
    "us_aloka": ("gdcm-US-ALOKA-16.dcm", "us"),
}


# the fetched families the phantom draws from: ultrasound, NM and XA are fetched but left out (see LEFT_OUT)
FETCHED_FAMILIES = ("ct", "mr", "xray")


@dataclass(frozen=True)
class Scan:
    name: str
    modality: str
    path: str
    group: str = ""  # scans of one patient or acquisition share it; empty: the scan is its own group

    @property
    def unit(self) -> str:
        """What the splits deal out: the group, else the scan itself."""
        return self.group or self.name


def _testdata(file: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(file)
    if path is None:
        raise FileNotFoundError(f"DICOM test file {file} not found: pip install pydicom pydicom-data")
    return str(path)


def fetched_scans(folder: Path, families: tuple[str, ...] = FETCHED_FAMILIES) -> list[Scan]:
    """The scans of ``families`` in a folder written by ``tools/fetch_scans.py`` (its ``scans.json``), by id."""
    import json

    records = json.loads((folder / "scans.json").read_text())["scans"]
    scans = [
        Scan(r["id"], r["family"], str((folder / "scans" / f"{r['id']}.npy").resolve()), r["group"])
        for r in sorted(records, key=lambda r: r["id"])
        if r["family"] in families
    ]
    if not scans:
        raise ValueError(f"{folder / 'scans.json'} holds no scan of the families {list(families)}")
    return scans


def available_scans(extra: str | None = None) -> list[Scan]:
    """The packaged scans, then one per file in ``extra`` (sorted; its modality is the file's name prefix before
    the first ``_``, e.g. ``mr_knee_3.dcm``); a fetched folder (with ``scans.json``) instead: its scans alone."""
    scans = [Scan(name, modality, file) for name, (file, modality) in SCANS.items()]
    if extra:
        folder = Path(extra)
        if not folder.is_dir():
            raise FileNotFoundError(f"--scans-dir {extra}: no such folder (fetch the scans first, or leave it out)")
        if (folder / "scans.json").exists():
            return fetched_scans(folder)
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".dcm", ".png"):
                scans.append(Scan(f"extra_{path.stem}", path.stem.split("_")[0].lower(), str(path)))
    return scans


@functools.cache
def load_scan(path: str) -> np.ndarray:
    """A scan as grey float32 in [0.1, 0.9] (0.5–99.5th percentile window, headroom for lesions), cached."""
    from PIL import Image

    from ..convert.dicom import dicom_from_bytes

    location = path if Path(path).is_absolute() else _testdata(path)
    if location.lower().endswith(".npy"):
        image = np.load(location, allow_pickle=False).astype(np.float32)
    elif location.lower().endswith(".png"):
        image = np.asarray(Image.open(location)).astype(np.float32)
    else:
        with open(location, "rb") as stream:
            image = dicom_from_bytes(stream.read()).image.astype(np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)  # colour ultrasound: its brightness
    low, high = np.percentile(image, [0.5, 99.5])
    return (0.1 + 0.8 * np.clip((image - low) / max(float(high - low), 1e-6), 0, 1)).astype(np.float32)
