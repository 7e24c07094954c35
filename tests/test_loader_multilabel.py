"""Multi-label shards through ``MedDiffuseLoader``: every image's finding vector (and mask) read back equals its row
of the real NIH / CheXpert table; tuple mode carries the mask where one exists; ``labels=False`` gives images
alone; shards written elsewhere (a .npy vector, a pickle beside it) are read without unpickling anything; stock
WebDataset reads the members too."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from builders import noise_image
from xray_tables import (
    CHEXPERT_TABLE,
    NIH_TABLE,
    as_valid,
    chexpert_patient,
    make_chexpert,
    make_nih,
    nih_patient,
    pixels_of,
    read_rows,
    rows_of_patients,
)

from meddiffuse_stream import MedDiffuseLoader
from meddiffuse_stream.convert import CheXpertSource, ConvertOptions, NihSource, convert_dataset
from meddiffuse_stream.shardfmt import ShardWriter, encode_png
from meddiffuse_stream.shardfmt.writer import EncodedSample

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    header, rows = read_rows(NIH_TABLE)
    chosen = rows_of_patients(rows, nih_patient, 200, seed=11)
    make_nih(root / "src", header, chosen, chosen)
    convert_dataset(NihSource(), str(root / "src"), str(root / "out"), ConvertOptions(shard_size=37), progress=False)
    return root / "out", {row[0]: row for row in chosen}


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    header, rows = read_rows(CHEXPERT_TABLE)
    train = rows_of_patients(rows[:20000], chexpert_patient, 120, seed=5)
    valid = as_valid(rows_of_patients(rows[20000:40000], chexpert_patient, 30, seed=5))
    src = make_chexpert(root, header, train, valid)
    source = CheXpertSource(uncertain="ignore", official=True)
    convert_dataset(source, str(src), str(root / "out"), ConvertOptions(shard_size=29), progress=False)
    return root / "out", header, {row[0].split("/", 1)[1]: row for row in [*train, *valid]}


def _read_all(dataset, split, **options):
    with MedDiffuseLoader(str(dataset), 8, split=split, as_dict=True, shuffle=False, **options) as loader:
        return list(loader)


def test_every_nih_vector_read_back_equals_its_row(nih):
    dataset, rows = nih
    names = json.loads((dataset / "dataset.json").read_text())["class_names"]
    seen = 0
    for split in SPLITS:
        for batch in _read_all(dataset, split, num_workers=2):
            assert batch["label"].dtype == torch.float32 and batch["label"].shape[1] == 14
            assert "label_mask" not in batch
            for index, meta in enumerate(batch["meta"]):
                if batch["is_padding"][index]:
                    continue
                row = rows[meta["source"].rsplit("/", 1)[-1]]
                expected = [float(name in row[1].split("|")) for name in names]
                assert batch["label"][index].tolist() == expected, meta["key"]
                image = (batch["image"][index, 0] * 255).round().to(torch.uint8).numpy()
                assert np.array_equal(image, pixels_of(row[0]))
                seen += 1
    assert seen == len(rows)


def test_chexpert_masks_read_back_and_tuple_mode_carries_them(chexpert):
    dataset, header, rows = chexpert
    names = header[5:]
    cell = {"1.0": 1.0, "0.0": 0.0, "": 0.0, "-1.0": None}
    unknown = 0
    for split in ("train", "val"):
        for batch in _read_all(dataset, split):
            for index, meta in enumerate(batch["meta"]):
                expected = [cell[rows[meta["source"]][header.index(n)]] for n in names]
                assert batch["label"][index].tolist() == [v or 0.0 for v in expected]
                assert batch["label_mask"][index].tolist() == [float(v is not None) for v in expected]
                unknown += sum(v is None for v in expected)
    assert unknown > 0
    with MedDiffuseLoader(str(dataset), 8) as loader:
        images, labels, mask = next(iter(loader))
    assert images.shape[0] == labels.shape[0] == mask.shape[0] == 8 and mask.dtype == torch.float32
    with MedDiffuseLoader(str(dataset), 8, labels=False) as loader:
        images = next(iter(loader))
    assert isinstance(images, torch.Tensor) and images.shape[:2] == (8, 1)
    with MedDiffuseLoader(str(dataset), 8, labels=False, as_dict=True) as loader:
        batch = next(iter(loader))
    assert "label" not in batch and "label_mask" not in batch and len(batch["key"]) == 8


def test_augment_mixes_finding_vectors_and_masks_through_the_loader(chexpert):
    dataset, _, _ = chexpert
    with MedDiffuseLoader(str(dataset), 8, augment="mixup", seed=3) as loader:
        _, targets, target_mask = next(iter(loader))
    with MedDiffuseLoader(str(dataset), 8, augment="mixup", seed=3, as_dict=True) as loader:
        batch = next(iter(loader))
    assert torch.equal(batch["target"], targets) and torch.equal(batch["target_mask"], target_mask)
    assert targets.shape == target_mask.shape == batch["label"].shape == (8, 14)
    mask = batch["label_mask"]
    # every row's mask is its own times its partner's: known only where both images know the finding
    assert all(any(torch.equal(target_mask[i], mask[i] * mask[j]) for j in range(8)) for i in range(8))
    assert bool((target_mask <= mask).all()) and bool((target_mask < mask).any())


def _wild_shard(path, count=6):
    """A WebDataset shard as found elsewhere: png, a 4-finding .npy vector, and a pickled label beside them."""
    rng = np.random.default_rng(0)
    vectors = rng.integers(0, 2, (count, 4)).astype(np.float32)
    with open(path, "wb") as stream:
        writer = ShardWriter(stream)
        for index, vector in enumerate(vectors):
            key = f"img{index:03d}"
            buffer = io.BytesIO()
            np.save(buffer, vector)
            members = (
                (f"{key}.png", encode_png(noise_image(rng, 8, 8))),
                (f"{key}.npy", buffer.getvalue()),
                (f"{key}.pyd", pickle.dumps(_Explodes())),
            )
            writer.add(EncodedSample(key, members, None))
        writer.close()
    return vectors


class _Explodes:
    def __reduce__(self):
        return (pytest.fail, ("a pickle was unpickled",))


def test_a_shard_found_elsewhere_reads_without_labels_or_with_its_vector(tmp_path):
    vectors = _wild_shard(tmp_path / "nih-000000.tar")
    url = str(tmp_path / "nih-000000.tar")
    with MedDiffuseLoader(url, 3, labels=False, shuffle=False) as loader:
        assert [tuple(images.shape) for images in loader] == [(3, 1, 8, 8)] * 2
    with MedDiffuseLoader(url, 3, task="multi_label", label_key="npy", shuffle=False, as_dict=True) as loader:
        labels = torch.cat([batch["label"] for batch in loader])
    assert labels.tolist() == vectors.tolist()
    with pytest.raises(Exception, match=r"missing label: no \.cls"):
        list(MedDiffuseLoader(url, 3, shuffle=False))


def test_what_cannot_go_together_is_said_at_construction(nih):
    dataset, _ = nih
    with pytest.raises(ValueError, match="'dafusion' does not run on multi-label data: diffusemix, hybrid-filter"):
        MedDiffuseLoader(str(dataset), 4, augment="dafusion")
    with pytest.raises(ValueError, match="labels=False and augment="):
        MedDiffuseLoader(str(dataset), 4, labels=False, augment="mixup")
    with pytest.raises(TypeError, match="labels must be True or False"):
        MedDiffuseLoader(str(dataset), 4, labels="no")
    with pytest.raises(ValueError, match="task must be"):
        MedDiffuseLoader(str(dataset), 4, task="multilabel")


def test_stock_webdataset_reads_the_finding_members(nih):
    webdataset = pytest.importorskip("webdataset")
    dataset, rows = nih
    info = json.loads((dataset / "dataset.json").read_text())
    shard = dataset / info["shards"][0]["path"]
    samples = list(webdataset.WebDataset(str(shard), shardshuffle=False).decode())
    assert len(samples) == info["shards"][0]["samples"]
    for sample in samples:
        row = rows[sample["json"]["source"].rsplit("/", 1)[-1]]
        assert sample["labels.json"] == [int(n in row[1].split("|")) for n in info["class_names"]]
