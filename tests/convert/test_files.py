"""Special files, symbolic links, OUT inside SRC and the per-file cap, in every file-based format."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from builders import make_breakhis, make_imagefolder, make_mura, noise_image, rsna_subset, small_dicom, write_image
from readback import check_accounting, load_dataset

from meddiffuse_stream.convert import (
    BreakHisSource,
    ConvertOptions,
    CsvSource,
    ImageFolderSource,
    MuraSource,
    RsnaSource,
    convert_dataset,
)

pytestmark = pytest.mark.timeout(60)  # a FIFO that is opened blocks forever: the timeout turns that into a failure


def _convert(source, src, out, **options):
    options = {"splits": {"train": 1.0}, **options}
    summary = convert_dataset(source, str(src), str(out), ConvertOptions(**options), progress=False)
    dataset = load_dataset(Path(out))
    check_accounting(dataset)
    return summary, dataset


def _reasons(dataset) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in dataset["rejects"]}


def _special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a socket, and a link to a character device, named like images; their expected reasons."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.png"))
    server.close()
    (folder / "zero.png").symlink_to("/dev/zero")
    return {"fifo.png": "a FIFO (named pipe)", "socket.png": "a socket", "zero.png": "a character device"}


def test_special_files_are_refused_from_stat_never_opened(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 3, "b": 3}, size=8)
    expected = _special_files(src / "a")
    summary, dataset = _convert(ImageFolderSource(), src, tmp_path / "out")
    reasons = _reasons(dataset)
    for name, kind in expected.items():
        assert reasons[f"a/{name}"].startswith(kind) and "not read" in reasons[f"a/{name}"]
    assert summary.found == 9 and summary.converted == 6


def test_git_annex_tree_links_are_followed_and_counted(tmp_path):
    """Files as links into .git/annex/objects (git-annex, DataLad); a broken link is an unfetched file."""
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    for label in ("normal", "tumour"):
        for index in range(3):
            target = src / ".git" / "annex" / "objects" / f"{label}{index}" / f"SHA256E-s1--{label}{index}.png"
            write_image(target, noise_image(rng, 8, 8))
            link = src / label / f"img{index}.png"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(target, link.parent))
    (src / "tumour" / "not_fetched.png").symlink_to("../.git/annex/objects/xx/SHA256E-missing.png")
    summary, dataset = _convert(ImageFolderSource(), src, tmp_path / "out")
    assert dataset["info"]["class_names"] == ["normal", "tumour"]
    assert summary.converted == 6 and summary.notes["symbolic links followed"] == 6
    assert "git annex get" in _reasons(dataset)["tumour/not_fetched.png"]
    assert dataset["info"]["notes"]["symbolic links followed"] == 6


def test_folder_links_are_followed_once_and_loops_are_not_followed(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    shared = make_imagefolder(tmp_path / "store", {"extra": 3}, size=8)
    (src / "a" / "more").symlink_to(shared / "extra", target_is_directory=True)  # a folder link out of SRC
    (src / "b" / "loop").symlink_to(src / "b", target_is_directory=True)  # back into itself
    (src / "a" / "self.png").symlink_to("self.png")  # a link to itself
    summary, dataset = _convert(ImageFolderSource(), src, tmp_path / "out")
    assert summary.converted == 7  # 4 + 3 through the folder link, none twice
    assert "symbolic link loop" in _reasons(dataset)["a/self.png"]
    notes = dataset["info"]["notes"]
    assert notes["folder links not followed (they lead back into a folder already scanned)"] == 1


def test_out_inside_src_is_never_an_input(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 4, "b": 4}, size=8)
    out = src / "shards"
    first, _ = _convert(ImageFolderSource(), src, out)
    second, dataset = _convert(ImageFolderSource(), src, out)  # shards/ would be a phantom class
    assert dataset["info"]["class_names"] == ["a", "b"] and second.found == first.found == 8
    assert second.reused_shards == first.shards
    linked = tmp_path / "in2"
    make_imagefolder(linked, {"a": 2, "b": 2}, size=8)
    (linked / "c").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _convert(ImageFolderSource(), linked, tmp_path / "elsewhere")  # OUT reached through a link inside SRC
    summary, dataset = _convert(ImageFolderSource(), linked, tmp_path / "elsewhere")
    assert dataset["info"]["class_names"] == ["a", "b"] and summary.found == 4


def test_per_file_size_cap_rejects_before_reading(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"a": 2, "b": 2}, size=8)
    write_image(src / "a" / "large.png", noise_image(np.random.default_rng(1), 64, 64))
    size = (src / "a" / "large.png").stat().st_size
    summary, dataset = _convert(ImageFolderSource(), src, tmp_path / "out", max_file_bytes=size - 1)
    assert f"file of {size} bytes is over the per-file limit" in _reasons(dataset)["a/large.png"]
    assert summary.converted == 4


def test_manifest_rows_naming_special_files_or_devices_are_rejected_with_their_line(tmp_path):
    write_image(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "ok2.png", np.zeros((8, 8), np.uint8))
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dev.png").symlink_to("/dev/zero")
    (tmp_path / "m.csv").write_text("path,label\nok.png,a\npipe.png,b\ndev.png,a\n/dev/zero,b\nok2.png,b\n")
    summary, dataset = _convert(CsvSource(), tmp_path / "m.csv", tmp_path / "out")
    reasons = _reasons(dataset)
    assert reasons["pipe.png"].startswith("line 3: a FIFO (named pipe)")
    assert reasons["dev.png"].startswith("line 4: a character device")
    assert reasons["/dev/zero"].startswith("line 5: a character device")
    assert summary.converted == 2


def test_mura_breakhis_and_rsna_refuse_special_files_too(tmp_path):
    mura_root = tmp_path / "mura"
    mura = make_mura(mura_root)
    image = mura_root / "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image2.png"
    image.unlink()
    os.mkfifo(image)
    _, dataset = _convert(MuraSource(), mura_root, tmp_path / "o1", splits=None)
    assert any("FIFO" in r["reason"] for r in dataset["rejects"])
    assert mura.exists()

    breakhis = make_breakhis(tmp_path / "bh", patients=4)
    victim = next(breakhis.rglob("*.png"))
    victim.unlink()
    os.mkfifo(victim)
    _, dataset = _convert(BreakHisSource(), breakhis, tmp_path / "o2")
    assert sum("FIFO" in r["reason"] for r in dataset["rejects"]) == 1

    text, patients = rsna_subset(positives=1, negatives=2)
    rsna = tmp_path / "rsna"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    (rsna / "stage_2_train_labels.csv").write_text(text)
    small_dicom("CT_small.dcm").save_as(rsna / "stage_2_train_images" / f"{patients[0]}.dcm")
    small_dicom("MR_small.dcm").save_as(rsna / "stage_2_train_images" / f"{patients[1]}.dcm")
    os.mkfifo(rsna / "stage_2_train_images" / f"{patients[2]}.dcm")
    _, dataset = _convert(RsnaSource(), rsna, tmp_path / "o3")
    assert [r["reason"][:14] for r in dataset["rejects"]] == ["a FIFO (named "]
    info = json.loads((tmp_path / "o3" / "dataset.json").read_text())
    assert info["counts"]["converted"] == 2
