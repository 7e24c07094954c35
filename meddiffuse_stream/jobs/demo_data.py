"""A labelled demo dataset on real anatomy: lesions inserted into crops of real DICOM images, masks exact.

No labelled diagnostic dataset can be installed offline, so the demo is a phantom task: label 1 images carry a
synthetic lesion (random size, shape, contrast and texture) at a random place, label 0 images carry none.

Two designs. With ``shortcut`` (what ``make demo`` builds): backgrounds from real scans (:mod:`.demo_scans`: the 13
pydicom ships, or a fetched set in ``scans_dir``), splits by patient or acquisition group, and a background cue
correlated with the label in train/val and reversed in test (:mod:`.demo_shortcut`). Without it (the first design,
kept for small fixtures): crops of six CR, CT and MR files, modality recorded, ``test_modality`` alone as the test
split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..convert.base import DEFAULT_RULES, Discovery, LoadedImage, ReadRules, SourceFormat, SourceItem
from ..storage import Location
from .demo_scans import available_scans, load_scan
from .demo_shortcut import add_cue, cue_present, deal_samples

__all__ = ["MODALITIES", "DemoSource", "render_sample"]

# modality -> DICOM files (pydicom's own test files and the pydicom-data package)
MODALITIES: dict[str, tuple[str, ...]] = {
    "cr_chest": ("RG1_UNCR.dcm",),
    "cr_extremity": ("RG3_UNCR.dcm",),
    "ct": ("693_UNCR.dcm", "CT_small.dcm"),
    "mr": ("MR2_UNCR.dcm", "MR_small.dcm"),
}
CLASS_NAMES = ["no_lesion", "lesion"]


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR))


def _crop(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A random square crop with tissue in it (not the empty border), resized to ``size``."""
    height, width = image.shape
    best, best_std = image[:1, :1], -np.inf  # replaced by the first draw (a flat dark patch scores -1)
    for _ in range(8):
        side = int(rng.uniform(0.2, 0.6) * min(height, width))
        side = max(min(side, min(height, width)), min(size, height, width))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        patch = image[top : top + side, left : left + side]
        spread = float(patch.std()) + (0.0 if patch.mean() > 0.15 else -1.0)
        if spread > best_std:
            best, best_std = patch, spread
    patch = _resize(best, size)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.rot90(patch, int(rng.integers(0, 4))).copy()


def _blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (PIL cannot blur float images)."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(array.astype(np.float64), radius, mode="reflect")
    height, width = array.shape
    rows = sum(tap * padded[:, offset : offset + width] for offset, tap in enumerate(taps))
    return sum(tap * rows[offset : offset + height, :] for offset, tap in enumerate(taps)).astype(np.float32)


def _lesion(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A soft, irregular, textured blob: (intensity profile in [0, 1], binary mask)."""
    radius = rng.uniform(0.06, 0.15) * size
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    stretch, angle = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / stretch
    theta = np.arctan2(v, u)
    wobble = sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    distance = np.hypot(u, v) / (radius * (1 + wobble))
    profile = 1.0 / (1.0 + np.exp((distance - 1.0) * 8.0))
    texture = _blur(rng.standard_normal((size, size)).astype(np.float32), 1.5)
    texture /= max(float(texture.std()), 1e-6)
    profile = np.clip(profile * (1.0 + 0.6 * texture), 0, None)
    return profile.astype(np.float32), (distance < 1.0).astype(np.uint8)


def render_sample(seed: int, index: int, size: int, modality: str, label: int) -> LoadedImage:
    """Sample ``index`` of the dataset drawn with ``seed`` (first design): the same arguments give the same pixels."""
    rng = np.random.default_rng((seed, index, 1))
    names = MODALITIES[modality]
    image = _crop(rng, load_scan(names[int(rng.integers(0, len(names)))]), size)
    return _finish(rng, image, size, label, {"modality": modality})


def render_shortcut_sample(
    seed: int, index: int, size: int, scan_path: str, label: int, cue: bool, meta: dict[str, Any]
) -> LoadedImage:
    """A shortcut-phantom sample: a crop of the scan, the lesion for label 1, the cue where ``cue``."""
    rng = np.random.default_rng((seed, index, 1))
    image = _crop(rng, load_scan(scan_path), size)
    if cue:
        image = add_cue(image, np.random.default_rng((seed, index, 2)))
    # many real scans are busier backgrounds than the first design's six: lesions a little stronger and mostly
    # bright (a dark lesion on a dark background clips to black), so a CPU teacher learns them
    return _finish(rng, image, size, label, dict(meta, cue=cue), contrast_range=(0.3, 0.5), bright_share=0.85)


def _finish(
    rng: np.random.Generator,
    image: np.ndarray,
    size: int,
    label: int,
    meta: dict[str, Any],
    contrast_range: tuple[float, float] = (0.15, 0.35),
    bright_share: float = 0.7,
) -> LoadedImage:
    mask = np.zeros((size, size), dtype=np.uint8)
    if label == 1:
        profile, mask = _lesion(rng, size)
        contrast = rng.uniform(*contrast_range) * (1 if rng.random() < bright_share else -1)
        image = image + contrast * profile
        meta.update(lesion_contrast=round(float(contrast), 4), lesion_pixels=int(mask.sum()))
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.02), image.shape)
    pixels = np.clip(np.rint(np.clip(image, 0, 1) * 255), 0, 255).astype(np.uint8)
    return LoadedImage(pixels, mask, meta)


@dataclass(frozen=True)
class DemoSource(SourceFormat):
    """``n`` samples of ``size``×``size``. ``shortcut`` (in [0.5, 1]): the shortcut phantom, split by source scan;
    else the first design, where ``test_modality`` alone may form the test split."""

    name = "demo"
    n: int = 2000
    size: int = 64
    seed: int = 0
    test_modality: str | None = None
    val_fraction: float = 0.1
    modalities: tuple[str, ...] = tuple(MODALITIES)
    shortcut: float | None = None
    test_fraction: float = 0.2
    scans_dir: str | None = None

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if self.n < 1 or self.size < 16:
            raise ValueError(f"--n must be at least 1 and --size at least 16 (got {self.n}, {self.size})")
        if self.shortcut is not None:
            return self._discover_shortcut()
        unknown = [m for m in (*self.modalities, self.test_modality) if m and m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}; choose from {sorted(MODALITIES)}")
        items = []
        for index in range(self.n):
            rng = np.random.default_rng((self.seed, index, 0))
            modality = self.modalities[int(rng.integers(0, len(self.modalities)))]
            label = int(rng.integers(0, 2))
            split = None
            if self.test_modality:
                split = (
                    "test"
                    if modality == self.test_modality
                    else ("val" if rng.random() < self.val_fraction else "train")
                )
            key = f"demo_{index:07d}"
            items.append(
                SourceItem(key, label, f"demo#{index}", index, key, split, {"modality": modality}, self.size**2)
            )
        return Discovery(CLASS_NAMES, items, [], official_splits=bool(self.test_modality), has_roi=True)

    def _discover_shortcut(self) -> Discovery:
        if self.test_modality:
            raise ValueError("--test-modality belongs to the first design; the shortcut phantom splits by scan")
        if not 0.5 <= float(self.shortcut or 0) <= 1:
            raise ValueError(f"--shortcut must be in [0.5, 1] (0.5: no shortcut), got {self.shortcut}")
        scans = available_scans(self.scans_dir)
        items = []
        dealt = deal_samples(scans, self.n, self.seed, self.val_fraction, self.test_fraction)
        for index, rng, split, scan in dealt:
            label = int(rng.integers(0, 2))
            cue = cue_present(rng, label, split, float(self.shortcut or 0))
            key = f"demo_{index:07d}"
            meta = {"modality": scan.modality, "scan": scan.name, "cue": cue}
            items.append(SourceItem(key, label, f"demo#{index}", index, scan.unit, split, meta, self.size**2))
        return Discovery(CLASS_NAMES, items, [], official_splits=True, has_roi=True)

    def load_many(self, src: Location, items: Sequence[SourceItem], rules: ReadRules = DEFAULT_RULES):
        paths = {scan.name: scan.path for scan in available_scans(self.scans_dir)} if self.shortcut else {}
        for item in items:
            if self.shortcut is None:
                yield render_sample(self.seed, item.ref, self.size, item.meta["modality"], item.label)
                continue
            meta = {"modality": item.meta["modality"], "scan": item.meta["scan"]}
            path = paths[item.meta["scan"]]
            yield render_shortcut_sample(self.seed, item.ref, self.size, path, item.label, item.meta["cue"], meta)
