#!/usr/bin/env python3
"""How many real scanner DICOMs convert: every image DICOM shipped by pydicom and pydicom-data, laid out as RSNA.

The files cover CR, CT, MR, NM, US, OT and SEG in little/big endian, implicit VR, deflated, RLE, JPEG baseline,
extended, lossless (process 14), JPEG-LS, JPEG 2000, palette and YBR colour, multi-frame and headerless files —
plus the test sets' deliberately broken ones. Each real MR image is added a second time with ``WindowCenter =
WindowWidth = 0``, as many MR exports carry. The script writes ``stage_2_train_labels.csv`` and
``stage_2_train_images/<patientId>.dcm``, runs ``meddiffuse-stream shard rsna`` on it, and prints how many convert,
each reject with its reason, and every file plain pydicom decodes that the converter rejects.

    python tools/real_dicom_check.py [--work DIR] [--json] [-- extra shard options]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little and big endian
_DEFLATED = b"1.2.840.10008.1.2.1.99"  # a deflated data set hides its tags: taken whole


def image_dicoms() -> list[Path]:
    """Every ``.dcm`` file of pydicom's test data and pydicom-data holding a PixelData tag (or deflated), by name."""
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*")
    chosen = {}
    for name in files:
        path = Path(name)
        if path.suffix.lower() != ".dcm" or not path.is_file():
            continue
        data = path.read_bytes()
        if any(tag in data for tag in _PIXEL_TAGS) or _DEFLATED in data[:1024]:
            chosen.setdefault(path.name, path)
    return [chosen[n] for n in sorted(chosen)]


def zero_window_copy(path: Path) -> bytes | None:
    """The file with WindowCenter = WindowWidth = 0 (an MR export habit), or None if it is no readable MR image."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception:
        return None
    if str(ds.get("Modality", "")) != "MR" or "PixelData" not in ds:
        return None
    ds.WindowCenter, ds.WindowWidth = 0, 0
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def plain_pydicom_decodes(data: bytes) -> bool:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            return ds.pixel_array.size > 0
    except Exception:
        return False


def lay_out(root: Path) -> dict[str, dict]:
    """The RSNA layout under ``root``; returns patientId -> {name, plain_pydicom}."""
    images = root / "stage_2_train_images"
    images.mkdir(parents=True, exist_ok=True)
    inputs: list[tuple[str, bytes]] = []
    for path in image_dicoms():
        data = path.read_bytes()
        inputs.append((path.name, data))
        variant = zero_window_copy(path)
        if variant is not None:
            inputs.append((f"{path.stem}+zero-window.dcm", variant))
    lines = ["patientId,x,y,width,height,Target"]
    catalogue = {}
    for index, (name, data) in enumerate(inputs):
        patient = f"real{index:03d}"
        (images / f"{patient}.dcm").write_bytes(data)
        target = index % 2
        lines.append(f"{patient},2,2,4,4,1" if target else f"{patient},,,,,0")
        catalogue[patient] = {"name": name, "plain_pydicom": plain_pydicom_decodes(data)}
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return catalogue


def run(work: Path, extra: list[str]) -> dict:
    src, out = work / "rsna", work / "shards"
    catalogue = lay_out(src)
    command = [
        sys.executable,
        "-m",
        "meddiffuse_stream.cli",
        "shard",
        "rsna",
        str(src),
        str(out),
        "--quiet",
        "--channels",
        "1",
        "--resize",
        "256",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    rejects = {}
    if (out / "rejects.jsonl").exists():
        for line in (out / "rejects.jsonl").read_text().splitlines():
            row = json.loads(line)
            rejects[Path(row["path"]).stem] = row["reason"]
    info = json.loads((out / "dataset.json").read_text()) if (out / "dataset.json").exists() else {}
    rows = [
        {"patient": p, **entry, "converted": p not in rejects, "reason": rejects.get(p)}
        for p, entry in sorted(catalogue.items())
    ]
    return {
        "command": " ".join(command[1:]),
        "exit_code": result.returncode,
        "summary": result.stdout.strip() or result.stderr.strip(),
        "files": len(rows),
        "zero_window_variants": sum("+zero-window" in r["name"] for r in rows),
        "converted": sum(r["converted"] for r in rows),
        "rejected": sum(not r["converted"] for r in rows),
        "plain_pydicom_decodes": sum(r["plain_pydicom"] for r in rows),
        "decodable_but_rejected": [r for r in rows if r["plain_pydicom"] and not r["converted"]],
        "rows": rows,
        "counts": info.get("counts"),
        "notes": info.get("notes"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder for the layout and the shards (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("extra", nargs="*", help="more options for meddiffuse-stream shard, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        os.makedirs(work, exist_ok=True)
        report = run(work, args.extra)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"$ {report['command']}")
    print(report["summary"])
    print(
        f"\n{report['files']} real image DICOMs ({report['zero_window_variants']} of them zero-window MR copies): "
        f"{report['converted']} converted, {report['rejected']} rejected; plain pydicom with the same codecs "
        f"decodes {report['plain_pydicom_decodes']}"
    )
    for row in report["rows"]:
        if not row["converted"]:
            print(f"  rejected  {row['name']:48s} {row['reason']}")
    for row in report["decodable_but_rejected"]:
        print(f"  decodable by pydicom, rejected here: {row['name']}: {row['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
