"""The done-when measure, as a test: every real image DICOM shipped by pydicom and pydicom-data, laid out as RSNA
(plus a zero-window copy of each MR), through the CLI. Whatever plain pydicom decodes converts, unless it holds more
than 16 bits per sample; every reject carries its reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_real_scanner_dicoms_laid_out_as_rsna_convert(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/real_dicom_check.py", "--json", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["exit_code"] == 0 and report["files"] >= 120
    assert report["counts"]["found"] == report["files"]
    assert report["converted"] + report["rejected"] == report["files"]
    beyond_16_bits = [
        r for r in report["decodable_but_rejected"] if "32 stored bits" in r["reason"] or "32-bit colour" in r["reason"]
    ]
    assert report["decodable_but_rejected"] == beyond_16_bits, report["decodable_but_rejected"]
    rows = {r["name"]: r for r in report["rows"]}
    zero_window = [r for name, r in rows.items() if "+zero-window" in name]
    assert len(zero_window) >= 15
    for row in zero_window:  # every zero-window MR whose original decodes converts too
        original = rows[row["name"].replace("+zero-window", "")]
        assert row["converted"] == original["converted"], row
    assert report["notes"]["DICOM window ignored (width 0 < 1): stored range kept"] == sum(
        r["converted"] for r in zero_window
    )
    for name in (
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "JPEG-LL.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "RG1_J2KR.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "OBXXXX1A_expb_2frame.dcm",
        "OT-PAL-8-face.dcm",
    ):
        assert rows[name]["converted"], (name, rows[name]["reason"])
    assert all(r["reason"] for r in report["rows"] if not r["converted"])
