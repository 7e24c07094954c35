"""Fetch the catalogue's archives and write its scans: ``OUT/scans/<id>.npy`` (uint16; the original grey value is
``stored * scale + offset``) and ``OUT/scans.json`` (one record per scan: id, group, modality, family, body part,
package, version, registry, archive, licence, member, shapes, scale, offset, sha256 of the stored pixels).

Deterministic: pinned archives, the catalogue's order, no randomness, so a re-run writes the same bytes (and leaves
files whose bytes would not change untouched, so ``make`` sees nothing new). A scan that does not decode, or whose
pixels repeat another's, stops the build with its name: the catalogue was curated, so either means it is wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import ARCHIVES, FAMILIES, SCANS, ArchiveSpec, SourceScan
from .readers import ArchiveReader, decode
from .registry import ScanFetchError, fetch_archive, run_client

__all__ = ["MAX_SIDE", "MIN_SIDE", "build_scans", "shrink", "to_uint16"]

MAX_SIDE = 1024  # larger images are block-averaged down to this (the phantom's crops are 20-60 % of the short side)
MIN_SIDE = 64


def shrink(grey: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Block means by the smallest whole factor that brings the longer side to at most ``max_side``."""
    factor = -(-max(grey.shape) // max_side)
    if factor <= 1:
        return grey
    height, width = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    return grey[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def to_uint16(grey: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored, scale, offset)`` with ``grey ≈ stored * scale + offset``; exact for integers spanning < 65536."""
    low, high = float(grey.min()), float(grey.max())
    if np.array_equal(grey, np.round(grey)) and high - low <= 65535:
        return (grey - low).astype(np.uint16), 1.0, low
    scale = (high - low) / 65535 if high > low else 1.0
    return np.round((grey - low) / scale).astype(np.uint16), scale, low


def _pixels_digest(stored: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(stored.shape, "<i8").tobytes() + stored.astype("<u2").tobytes()).hexdigest()


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(path)


def _record(scan: SourceScan, spec: ArchiveSpec, original: Sequence[int], stored: np.ndarray, **extra: Any) -> dict:
    return {
        "id": f"{spec.name.replace('.', '-')}__{scan.name}",
        "group": scan.group,
        "modality": scan.modality,
        "family": FAMILIES[scan.modality],
        "body_part": scan.body,
        "package": spec.name,
        "version": spec.version,
        "registry": spec.registry,
        "archive": spec.filename,
        "archive_sha256": spec.sha256,
        "licence": spec.licence,
        "member": scan.member,
        "note": scan.note,
        "original_shape": list(original),
        "shape": list(stored.shape),
        **extra,
    }


def build_scans(
    out: Path,
    *,
    cache: Path | None = None,
    offline: bool = False,
    scans: Iterable[SourceScan] = SCANS,
    archives: dict[str, ArchiveSpec] | None = None,
    run: Callable[[Sequence[str], str], None] = run_client,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fetch (or reuse) the archives, decode every scan, write ``out``; the written ``scans.json`` as a dict."""
    archives = ARCHIVES if archives is None else archives
    chosen = list(scans)
    cache = cache or out / "cache"
    (out / "scans").mkdir(parents=True, exist_ok=True)
    needed = sorted({scan.archive for scan in chosen})
    unknown = [name for name in needed if name not in archives]
    if unknown:
        raise ValueError(f"scans name archives the catalogue does not pin: {unknown}")
    paths = {name: fetch_archive(archives[name], cache, offline=offline, run=run) for name in needed}
    readers = {name: ArchiveReader(path) for name, path in paths.items()}
    records: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    try:
        for scan in chosen:
            spec = archives[scan.archive]
            try:
                grey, info = decode(scan, readers[scan.archive])
            except Exception as error:
                raise ScanFetchError(
                    f"{scan.name} ({scan.member} in {spec.filename}) does not decode: {error}. DICOM codecs come "
                    "with `pip install meddiffuse-stream[dicom]` (make setup installs them)"
                ) from error
            if grey.ndim != 2 or min(grey.shape) < MIN_SIDE:
                raise ScanFetchError(f"{scan.name}: decoded to shape {grey.shape}, need 2-D of side ≥ {MIN_SIDE}")
            stored, scale, offset = to_uint16(np.ascontiguousarray(shrink(grey)))
            digest = _pixels_digest(stored)
            if digest in seen:
                raise ScanFetchError(f"{scan.name} has the same pixels as {seen[digest]}: fix the catalogue")
            seen[digest] = scan.name
            record = _record(scan, spec, grey.shape, stored, scale=scale, offset=offset, sha256=digest, **info)
            buffer = _npy_bytes(stored)
            _write_if_changed(out / "scans" / f"{record['id']}.npy", buffer)
            records.append(record)
            log(f"  {record['id']:52s} {scan.modality:2s} {list(grey.shape)} -> {list(stored.shape)}")
    finally:
        for reader in readers.values():
            reader.close()
    records.sort(key=lambda r: r["id"])
    document = {"summary": _summary(records), "scans": records}
    _write_if_changed(out / "scans.json", (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())
    return document


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    families = sorted({r["family"] for r in records})
    return {
        "scans": len(records),
        "groups": len({r["group"] for r in records}),
        "groups_by_family": {f: len({r["group"] for r in records if r["family"] == f}) for f in families},
        "packages": sorted({f"{r['package']} {r['version']} ({r['registry']}, {r['licence']})" for r in records}),
    }
