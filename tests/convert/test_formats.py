"""Each source format on a small copy of its real layout: labels, patients, splits, ROI, rejects."""

import json
from collections import defaultdict

import numpy as np
import pytest
from builders import (
    make_breakhis,
    make_imagefolder,
    make_mura,
    make_pcam,
    noise_image,
    rsna_subset,
    small_dicom,
    write_image,
)
from readback import check_accounting, load_dataset, pixels

from meddiffuse_stream.convert import (
    BreakHisSource,
    ConversionError,
    ConvertOptions,
    CsvSource,
    ImageFolderSource,
    MuraSource,
    PcamSource,
    RsnaSource,
    convert_dataset,
)
from meddiffuse_stream.convert.breakhis import parse_breakhis_name


def _convert(source, src, out, **options):
    convert_dataset(source, str(src), str(out), ConvertOptions(**options), progress=False)
    dataset = load_dataset(out)
    check_accounting(dataset)
    return dataset


def _assert_no_patient_leak(dataset):
    splits = defaultdict(set)
    for row in dataset["index"]:
        splits[row["patient_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_breakhis_labels_subtypes_patients_and_no_leak(tmp_path):
    src = make_breakhis(tmp_path / "in", patients=8)
    (src / "histology_slides" / "breast" / "benign" / "SOB_B_X-14-1-40-001.png").write_bytes(b"junk")
    dataset = _convert(BreakHisSource(), src, tmp_path / "out", splits={"train": 0.5, "test": 0.5})
    assert dataset["info"]["class_names"] == ["benign", "malignant"]
    assert dataset["info"]["counts"] == {"found": 33, "converted": 32, "rejected": 1, "samples": 32}
    assert "unknown tumour type 'X'" in dataset["rejects"][0]["reason"]
    row = next(r for r in dataset["index"] if r["source"].endswith("SOB_M_DC-14-22551AB-100-002.png"))
    assert (row["label"], row["subtype"], row["magnification"], row["patient_id"]) == (
        1,
        "ductal_carcinoma",
        100,
        "14-22551AB",
    )
    _assert_no_patient_leak(dataset)
    subtype = _convert(BreakHisSource(label="subtype", magnifications=(40,)), src, tmp_path / "sub")
    assert subtype["info"]["num_classes"] == 8 and {r["magnification"] for r in subtype["index"]} == {40}


@pytest.mark.parametrize(
    "name", ["SOB_B_X-14-1-40-001.png", "SOB_M_A-14-22549AB-40-001.png", "SOB_B_A-14-22549AB-50-001.png", "x.png"]
)
def test_breakhis_names_that_lie_are_refused(name):
    with pytest.raises(ValueError):
        parse_breakhis_name(name)


def test_mura_keeps_official_split_and_study_labels(tmp_path):
    root = tmp_path / "in"
    mura = make_mura(root)
    with open(mura / "valid_image_paths.csv", "a") as stream:
        stream.write("MURA-v1.1/valid/XR_ELBOW/patient11185/study1_positive/image9.png\n")
    dataset = _convert(MuraSource(), root, tmp_path / "out")
    assert dataset["info"]["official_splits"] and set(dataset["info"]["splits"]) == {"train", "val"}
    assert dataset["rejects"] == [
        {
            "key": None,
            "path": "MURA-v1.1/valid/XR_ELBOW/patient11185/study1_positive/image9.png",
            "reason": "referenced file is missing",
        }
    ]
    by_patient = {r["patient_id"]: (r["split"], r["label"], r["body_part"]) for r in dataset["index"]}
    assert by_patient == {
        "patient00001": ("train", 1, "shoulder"),
        "patient00002": ("train", 0, "wrist"),
        "patient11185": ("val", 1, "elbow"),
    }
    with pytest.raises(ValueError, match="official splits"):
        _convert(MuraSource(), mura, tmp_path / "o2", splits={"train": 1.0})  # SRC may be MURA-v1.1 itself


def test_pcam_reads_official_splits_with_centre_roi(tmp_path):
    import h5py

    src = make_pcam(tmp_path / "in")
    dataset = _convert(PcamSource(), src, tmp_path / "out", shard_size=8)
    assert dataset["info"]["counts"]["converted"] == 32 and dataset["info"]["has_roi"]
    with (
        h5py.File(src / "camelyonpatch_level_2_split_valid_x.h5") as x,
        h5py.File(src / "camelyonpatch_level_2_split_valid_y.h5") as y,
    ):
        sample = dataset["samples"]["pcam_val_0000003"]
        assert np.array_equal(pixels(sample["png"]), x["x"][3])
        assert int(sample["cls"]) == int(y["y"][3].item())
    roi = pixels(dataset["samples"]["pcam_val_0000003"]["roi.png"])
    assert roi.sum() == 32 * 32 * 255 and roi[32:64, 32:64].all()


def test_pcam_gzipped_files_get_a_clear_error(tmp_path):
    (tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="gunzip"):
        _convert(PcamSource(), tmp_path, tmp_path / "out")


def test_rsna_real_label_csv_dicoms_monochrome1_compressed_and_boxes(tmp_path):
    text, patients = rsna_subset(positives=3, negatives=2)
    src = tmp_path / "rsna"
    images = src / "stage_2_train_images"
    images.mkdir(parents=True)
    (src / "stage_2_train_labels.csv").write_text(text)
    # real CR DICOMs: MONOCHROME1 uncompressed (downsampled to 1024 like RSNA's), MONOCHROME1 JPEG 2000, CT
    small_dicom("RG1_UNCR.dcm", size=1024, PatientID=patients[0]).save_as(images / f"{patients[0]}.dcm")
    small_dicom("RG1_J2KR.dcm").save_as(images / f"{patients[1]}.dcm")
    small_dicom("CT_small.dcm").save_as(images / f"{patients[3]}.dcm")
    small_dicom("MR_small.dcm").save_as(images / "not-in-csv.dcm")
    (images / f"{patients[4]}.dcm").write_bytes(b"")  # zero-byte; patients[2] has no file at all
    dataset = _convert(RsnaSource(), src, tmp_path / "out", resize=128, splits={"train": 0.6, "test": 0.4})
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in dataset["rejects"]}
    assert reasons == {
        f"{patients[2]}.dcm": "referenced file is missing",
        f"{patients[4]}.dcm": "zero-byte file",
        "not-in-csv.dcm": "no row in the label CSV for this image",
    }
    first = dataset["samples"][f"rsna_{patients[0]}"]
    meta = json.loads(first["json"])
    assert int(first["cls"]) == 1 and meta["photometric"] == "MONOCHROME1" and len(meta["boxes"]) == 2
    assert pixels(first["png"]).dtype == np.uint16  # 15-bit source stays 16-bit
    roi = pixels(first["roi.png"]) > 0
    expected = np.zeros((1024, 1024), bool)
    for x, y, w, h in meta["boxes"]:
        expected[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
    assert abs(roi.mean() - expected.mean()) < 0.02  # boxes rasterised at 1024, resized to 128
    assert not pixels(dataset["samples"][f"rsna_{patients[3]}"]["roi.png"]).any()  # negative: empty ROI


def test_imagefolder_patient_regex_and_unreadable_files(tmp_path):
    src = make_imagefolder(tmp_path / "in", {"normal": 6, "tumour": 4})
    (src / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (src / "tumour" / "empty.png").write_bytes(b"")
    (src / "tumour" / "notes.txt").write_text("not an image")
    (src / "normal" / ".DS_Store").write_bytes(b"hidden files are not inputs")
    dataset = _convert(ImageFolderSource(), src, tmp_path / "out")
    assert dataset["info"]["counts"] == {"found": 13, "converted": 10, "rejected": 3, "samples": 10}
    regex = _convert(ImageFolderSource(patient_regex=r"img0*(?P<patient>\d)"), src, tmp_path / "o2")
    assert {r["patient_id"] for r in regex["index"]} == {str(i) for i in range(6)}
    assert sum("does not match the file name" in r["reason"] for r in regex["rejects"]) == 3


def test_csv_manifest_labels_patients_extra_columns_and_rejects(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "img" / f"{name}.png", noise_image(rng, 8, 8))
    (tmp_path / "data.csv").write_text(
        "path,label,patient_id,site\nimg/a.png,normal,p1,x\nimg/b.png,pneumonia,p1,y\nimg/c.png,pneumonia,p2,z\n"
        "img/d.png,unknown,p3,z\nimg/missing.png,normal,p4,z\nimg/a.png,normal,p1,x\n,normal,p5,z\n"
    )
    dataset = _convert(CsvSource(classes=("normal", "pneumonia")), tmp_path / "data.csv", tmp_path / "out")
    assert dataset["info"]["counts"] == {"found": 7, "converted": 3, "rejected": 4, "samples": 3}
    assert {r["columns"]["site"] for r in dataset["index"]} == {"x", "y", "z"}
    _assert_no_patient_leak(dataset)
    reasons = " | ".join(r["reason"] for r in dataset["rejects"])
    for expected in ("is not one of", "referenced file is missing", "duplicate of line 2", "empty path"):
        assert expected in reasons


def test_csv_integer_labels_out_of_range_are_rejected(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "m.csv").write_text("path,label\na.png,1\nb.png,-1\n")
    dataset = _convert(CsvSource(), tmp_path / "m.csv", tmp_path / "out")
    assert dataset["info"]["class_names"] == ["0", "1"] and dataset["info"]["counts"]["rejected"] == 1


def test_nothing_convertible_is_an_error_naming_the_rejects(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.png").write_bytes(b"")
    with pytest.raises(ConversionError, match="all 1 inputs were rejected"):
        _convert(ImageFolderSource(), tmp_path / "in", tmp_path / "out")
    assert "zero-byte" in (tmp_path / "out" / "rejects.jsonl").read_text()
    with pytest.raises(ValueError, match="no class folders"):
        _convert(ImageFolderSource(), tmp_path / "in" / "a", tmp_path / "out2")
