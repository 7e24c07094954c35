"""The multi-finding demo phantom: up to three findings inserted into crops of real scans, each with its own mask.

``demo-data OUT --findings K`` builds a multi-label dataset (``task: multi_label``) whose findings co-occur at set
rates, drawn independently per image (so an image may carry none, one or several, overlapping or not):

- ``nodule`` (35 %): the single-label phantom's lesion — a soft, irregular, textured blob of 4–10 px radius at
  64 px, contrast 0.35–0.55, bright in 85 %;
- ``band_opacity`` (30 %): a straight band 5–9 px wide and 40–70 % of the side long at any angle, soft-edged and
  faintly textured, contrast 0.25–0.4 brighter (an opacity);
- ``line_artefact`` (30 %): a thin straight bright line (~2 px) over 50–90 % of the side — a wire or a
  tube-like artefact, contrast 0.4–0.6.

Each finding's ROI is where its profile is at least half its peak; the ROIs go into ``{key}.rois.png`` (bit k =
finding k, :mod:`meddiffuse_stream.shardfmt.rois`) and their union into ``{key}.roi.png``. Backgrounds and splits
are those of the shortcut phantom — the 13 packaged CT, MR and CR scans, or a fetched set (``--scans-dir``), dealt
to test, val and train by group (one patient or acquisition), so no group is in two splits — without its cue.
Every draw is seeded from ``(seed, index)`` (and per finding ``(seed, index, 10 + k)``): the same arguments give
the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..convert.base import DEFAULT_RULES, Discovery, LoadedImage, ReadRules, Reject, SourceFormat, SourceItem
from ..shardfmt.rois import pack_finding_rois
from ..storage import Location
from .demo_data import _blur, _crop, _lesion
from .demo_scans import available_scans, load_scan
from .demo_shortcut import deal_samples

__all__ = ["FINDINGS", "RATES", "FindingsSource", "render_findings_sample"]

FINDINGS = ("nodule", "band_opacity", "line_artefact")
RATES = (0.35, 0.30, 0.30)  # each finding's share of images, drawn independently


def _strip(rng: np.random.Generator, size: int, width: float, length: float) -> np.ndarray:
    """A soft straight strip at a random angle and place: profile in [0, 1] (0.5 at its edges)."""
    centre = rng.uniform(0.25 * size, 0.75 * size, 2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    sharp = 4.0 / max(width, 1.0)
    side = 1.0 / (1.0 + np.exp((np.abs(across) - width / 2) * sharp * 2))
    ends = 1.0 / (1.0 + np.exp((np.abs(along) - length / 2) * 1.5))
    return (side * ends).astype(np.float32)


def _band(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(textured profile, mask): the mask is the untextured strip's half-height, so texture never splits it."""
    width, length = rng.uniform(0.08, 0.14) * size, rng.uniform(0.4, 0.7) * size
    strip = _strip(rng, size, width, length)
    texture = _blur(rng.standard_normal((size, size)).astype(np.float32), 2.0)
    texture /= max(float(texture.std()), 1e-6)
    return np.clip(strip * (1.0 + 0.3 * texture), 0, None).astype(np.float32), strip >= 0.5


def _finding(kind: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Finding ``kind``'s (intensity profile, mask, contrast)."""
    if kind == 0:
        profile, mask = _lesion(rng, size)
        return profile, mask.astype(bool), float(rng.uniform(0.35, 0.55) * (1 if rng.random() < 0.85 else -1))
    if kind == 1:
        profile, band = _band(rng, size)
        return profile, band, float(rng.uniform(0.25, 0.4))
    line = _strip(rng, size, rng.uniform(2.0, 3.0), rng.uniform(0.5, 0.9) * size)
    return line, line >= 0.5, float(rng.uniform(0.4, 0.6))


def render_findings_sample(seed: int, index: int, size: int, scan_path: str, findings: Sequence[int]) -> LoadedImage:
    """Sample ``index``: a crop of the scan with each finding whose entry in ``findings`` is 1, and its ROIs."""
    rng = np.random.default_rng((seed, index, 1))
    image = _crop(rng, load_scan(scan_path), size)
    masks = np.zeros((len(findings), size, size), dtype=bool)
    meta: dict[str, object] = {}
    for kind, present in enumerate(findings):
        if not present:
            continue
        profile, masks[kind], contrast = _finding(kind, np.random.default_rng((seed, index, 10 + kind)), size)
        image = image + contrast * profile
        meta[f"{FINDINGS[kind]}_contrast"] = round(contrast, 4)
        meta[f"{FINDINGS[kind]}_pixels"] = int(masks[kind].sum())
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.02), image.shape)
    pixels = np.clip(np.rint(np.clip(image, 0, 1) * 255), 0, 255).astype(np.uint8)
    rois = pack_finding_rois(masks)
    return LoadedImage(pixels, (rois > 0).astype(np.uint8), meta, rois=rois)


@dataclass(frozen=True)
class FindingsSource(SourceFormat):
    """``n`` multi-label samples of ``size``×``size`` with the first ``findings`` of :data:`FINDINGS`."""

    name = "demo"
    n: int = 2000
    size: int = 64
    seed: int = 0
    findings: int = 3
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    scans_dir: str | None = None

    def discover(self, src: Location, rules: ReadRules = DEFAULT_RULES) -> Discovery:
        if self.n < 1 or self.size < 16:
            raise ValueError(f"--n must be at least 1 and --size at least 16 (got {self.n}, {self.size})")
        if not 1 <= self.findings <= len(FINDINGS):
            raise ValueError(f"--findings must be 1..{len(FINDINGS)} (of {', '.join(FINDINGS)}), got {self.findings}")
        scans = available_scans(self.scans_dir)
        items = []
        dealt = deal_samples(scans, self.n, self.seed, self.val_fraction, self.test_fraction)
        for index, rng, split, scan in dealt:
            present = tuple(int(rng.random() < rate) for rate in RATES[: self.findings])
            meta = {"modality": scan.modality, "scan": scan.name}
            key = f"demo_{index:07d}"
            items.append(
                SourceItem(key, -1, f"demo#{index}", index, scan.unit, split, meta, self.size**2, findings=present)
            )
        names = list(FINDINGS[: self.findings])
        return Discovery(names, items, [], official_splits=True, has_roi=True, task="multi_label")

    def load_many(
        self, src: Location, items: Sequence[SourceItem], rules: ReadRules = DEFAULT_RULES
    ) -> Iterator[LoadedImage | Reject]:
        paths = {scan.name: scan.path for scan in available_scans(self.scans_dir)}
        for item in items:
            assert item.findings is not None
            loaded = render_findings_sample(self.seed, item.ref, self.size, paths[item.meta["scan"]], item.findings)
            loaded.meta.update(modality=item.meta["modality"], scan=item.meta["scan"])
            yield loaded
