"""The multi-finding phantom: findings at their set rates, split by scan, each finding's ROI exactly where it
changed the image, the ROIs in one bit-mask member the loader unpacks (``rois``, union in ``roi``), same bytes
for the same seed."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.convert import ConvertOptions, convert_dataset
from meddiffuse_stream.jobs.demo_findings import FINDINGS, RATES, FindingsSource, render_findings_sample
from meddiffuse_stream.jobs.demo_scans import available_scans
from meddiffuse_stream.storage import Location

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings") / "ds"
    convert_dataset(FindingsSource(n=90, size=32, seed=4), None, str(out), ConvertOptions(), progress=False)
    return out


def _all(dataset, split):
    with MedDiffuseLoader(str(dataset), 16, split=split, as_dict=True, shuffle=False) as loader:
        return list(loader)


def test_findings_come_at_their_rates_and_co_occur_independently():
    items = FindingsSource(n=3000, size=32, seed=1).discover(Location("memory://unused")).items
    vectors = np.array([item.findings for item in items], dtype=float)
    for share, rate in zip(vectors.mean(axis=0), RATES, strict=True):
        assert abs(share - rate) < 4 * np.sqrt(rate * (1 - rate) / len(items))
    both = (vectors[:, 0] * vectors[:, 2]).mean()
    assert abs(both - RATES[0] * RATES[2]) < 4 * np.sqrt(RATES[0] * RATES[2] / len(items))
    assert (vectors.sum(axis=1) == 0).any() and (vectors.sum(axis=1) == 3).any()


def test_the_dataset_is_multi_label_split_by_scan_and_the_loader_delivers_every_finding_roi(phantom):
    info = json.loads((phantom / "dataset.json").read_text())
    assert info["task"] == "multi_label" and info["class_names"] == list(FINDINGS) and info["has_roi"]
    scans: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for batch in _all(phantom, split):
            for meta in batch["meta"]:
                scans.setdefault(meta["scan"], set()).add(split)
            rois, labels = batch["rois"], batch["label"]
            assert rois.shape == (len(labels), 3, 32, 32) and set(rois.unique().tolist()) <= {0.0, 1.0}
            assert torch.equal(rois.flatten(2).amax(dim=2), labels), "a finding has pixels exactly when it is present"
            assert torch.equal(batch["roi"][:, 0], rois.amax(dim=1)), "roi.png is the union"
    assert all(len(splits) == 1 for splits in scans.values()), "no scan is in two splits"
    with MedDiffuseLoader(str(phantom), 4) as loader:
        _, labels = next(iter(loader))  # tuple mode: no mask (every finding is known)
    assert labels.shape == (4, 3)


def test_each_roi_is_the_pixels_its_finding_changed(phantom):
    scan = available_scans()[0]
    for index in range(12):
        alone = [
            render_findings_sample(4, index, 48, scan.path, tuple(int(k == j) for j in range(3))) for k in range(3)
        ]
        plain = render_findings_sample(4, index, 48, scan.path, (0, 0, 0)).image.astype(float)
        for kind, sample in enumerate(alone):
            change = np.abs(sample.image.astype(float) - plain)
            mask = (sample.rois >> kind) & 1 == 1
            assert mask.any() and (sample.rois & ~np.uint8(1 << kind)).max() == 0
            assert np.array_equal(sample.roi > 0, mask)
            inside, outside = change[mask].mean(), change[~mask].mean()
            assert inside > 6 and inside > 4 * outside, (kind, inside, outside)  # grey levels of 255
    both = render_findings_sample(4, 3, 48, scan.path, (1, 1, 1))
    assert [(both.rois >> k & 1).any() for k in range(3)] == [True, True, True]


def test_same_seed_same_bytes(tmp_path):
    digests = []
    for name in ("a", "b"):
        convert_dataset(
            FindingsSource(n=20, size=24, seed=9), None, str(tmp_path / name), ConvertOptions(), progress=False
        )
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).rglob("*.tar")})
    assert digests[0] == digests[1] and digests[0]


def test_bad_arguments_are_refused(tmp_path):
    for arguments, message in (
        (["--findings", "4"], "--findings must be 1..3"),
        (["--findings", "2", "--shortcut", "0.75"], "leave out --shortcut"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "meddiffuse_stream.cli", "demo-data", str(tmp_path / "x"), "--n", "4", *arguments],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode != 0 and message in result.stderr, result.stderr[-500:]
