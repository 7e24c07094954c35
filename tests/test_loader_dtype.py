"""dtype=: float32 in [0, 1] by default, or the stored integers for the device to convert (unit_float); the fused
default chain and the per-sample chain deliver the same batches."""

import functools
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_image
from loader_helpers import uneven_dataset

from meddiffuse_stream import ConvertOptions, MedDiffuseLoader, convert_dataset, unit_float
from meddiffuse_stream.augment import AugmentStage
from meddiffuse_stream.convert import ImageFolderSource
from meddiffuse_stream.nodes import Map


def _folder_dataset(root: Path, images: dict[str, np.ndarray]) -> str:
    for name, array in images.items():
        write_image(root / "in" / ("a" if int(name) % 2 else "b") / f"{name}.png", array)
    convert_dataset(
        ImageFolderSource(),
        str(root / "in"),
        str(root / "ds"),
        ConvertOptions(splits={"train": 1.0}, shard_size=5),
        progress=False,
    )
    return str(root / "ds")


def _all(source: str, **settings) -> dict[str, torch.Tensor]:
    with MedDiffuseLoader(source, 4, shuffle=False, as_dict=True, **settings) as loader:
        batches = list(loader)
    return {
        "image": torch.cat([b["image"] for b in batches]),
        "label": torch.cat([b["label"] for b in batches]),
        "key": [k for b in batches for k in b["key"]],
    }


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return str(uneven_dataset(tmp_path_factory.mktemp("grey"), samples=22, shard_size=6, size=12))


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_batches_are_the_stored_pixels_and_unit_float_makes_the_float_batches(grey, workers):
    floats = _all(grey, num_workers=workers)
    stored = _all(grey, num_workers=workers, dtype="uint8")
    wide = _all(grey, num_workers=workers, dtype=torch.uint16)
    assert floats["image"].dtype == torch.float32 and stored["image"].dtype == torch.uint8
    assert floats["key"] == stored["key"] == wide["key"]
    assert torch.equal(unit_float(stored["image"]), floats["image"])
    assert torch.equal(wide["image"].to(torch.int32), stored["image"].to(torch.int32) * 257)
    assert torch.allclose(unit_float(wide["image"]), floats["image"], atol=1e-7)
    assert torch.equal(stored["label"], floats["label"])


def test_sixteen_bit_images_keep_their_depth_and_refuse_uint8(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{i:02d}": rng.integers(0, 65536, (6, 7), dtype=np.int64).astype(np.uint16) for i in range(6)}
    source = _folder_dataset(tmp_path, arrays)
    wide = _all(source, dtype="uint16")
    floats = _all(source)
    assert wide["image"].dtype == torch.uint16
    assert {image[0].numpy().tobytes() for image in wide["image"]} == {a.tobytes() for a in arrays.values()}
    assert torch.allclose(unit_float(wide["image"]), floats["image"], atol=1e-7)
    for workers in (0, 2):
        with pytest.raises((ValueError, RuntimeError), match="dtype='uint16'"):
            _all(source, dtype="uint8", num_workers=workers)


def test_colour_batches_in_uint8(tmp_path):
    rng = np.random.default_rng(1)
    source = _folder_dataset(tmp_path, {f"{i:02d}": rng.integers(0, 256, (5, 9, 3), dtype=np.uint8) for i in range(8)})
    stored = _all(source, dtype="uint8", num_workers=2)
    floats = _all(source, num_workers=2)
    assert stored["image"].shape == (8, 3, 5, 9) and stored["image"].is_contiguous()
    assert torch.equal(unit_float(stored["image"]), floats["image"])


def test_bad_dtype_settings_are_refused(grey):
    with pytest.raises(ValueError, match="dtype must be one of"):
        MedDiffuseLoader(grey, 4, dtype="int8")
    with pytest.raises(ValueError, match="transform="):
        MedDiffuseLoader(grey, 4, dtype="uint8", transform=lambda sample: sample)


def test_unit_float_on_every_delivered_dtype():
    assert torch.equal(unit_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0]))
    assert torch.equal(unit_float(torch.tensor([0, 65535], dtype=torch.uint16)), torch.tensor([0.0, 1.0]))
    floats = torch.rand(3)
    assert unit_float(floats) is floats


def _identity(sample):
    return sample


def _corrupt_one_png(dataset: str) -> str:
    """One image of the second shard replaced by bytes that are no PNG (dataset.json updated to match)."""
    root = Path(dataset)
    info = json.loads((root / "dataset.json").read_text())
    entry = info["shards"][1]
    path = root / entry["path"]
    with tarfile.open(path) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        done = False
        for member, data in members:
            if member.name.endswith(".png") and not done:
                data, done = b"\x89PNG\r\n\x1a\nbroken" + bytes(len(data)), True
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    entry.update(bytes=len(out.getvalue()), sha256=hashlib.sha256(out.getvalue()).hexdigest())
    (root / "dataset.json").write_text(json.dumps(info))
    return dataset


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_the_fused_chain_and_the_per_sample_chain_deliver_the_same_batches(tmp_path, dtype):
    source = _corrupt_one_png(str(uneven_dataset(tmp_path, samples=30, shard_size=7, size=10)))
    settings = {"num_workers": 2, "on_error": "skip", "shuffle": True, "seed": 4, "as_dict": True}
    stage = functools.partial(Map, fn=_identity)  # a per-sample stage: the chain is Decode → Map → Batch
    fused_loader = MedDiffuseLoader(source, 4, dtype=dtype, **settings)
    staged_loader = MedDiffuseLoader(source, 4, stages=[stage], **settings)
    with fused_loader, staged_loader:
        fused, staged = list(fused_loader), list(staged_loader)
        assert fused_loader.counters == staged_loader.counters and fused_loader.counters["skipped"] == 1
    assert len(fused) == len(staged)
    for a, b in zip(fused, staged, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["label"], b["label"])
        assert torch.equal(a["is_padding"], b["is_padding"])
        assert torch.equal(unit_float(a["image"]), b["image"])


def test_the_device_stage_takes_uint8_batches_as_their_float_values(grey):
    with MedDiffuseLoader(grey, 8, shuffle=False, as_dict=True, dtype="uint8") as loader:
        batch = next(iter(loader))
    floats = dict(batch, image=unit_float(batch["image"]))
    outputs = [AugmentStage("mixup", 2, seed=3)(each, details=False) for each in (batch, floats)]
    assert outputs[0]["image"].dtype == torch.float32
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])
    assert torch.equal(outputs[0]["target"], outputs[1]["target"])


def test_training_on_uint8_batches_ends_with_the_float_run_weights(tmp_path):
    from meddiffuse_stream import DemoSource
    from meddiffuse_stream.jobs.train import TrainConfig, train

    convert_dataset(
        DemoSource(n=40, size=16),
        None,
        str(tmp_path / "demo"),
        ConvertOptions(splits={"train": 0.8, "val": 0.2}, shard_size=9),
        progress=False,
    )
    fingerprints = []
    for dtype in ("float32", "uint8"):
        out = tmp_path / dtype
        train(
            TrainConfig(
                str(tmp_path / "demo"),
                str(out),
                epochs=1,
                batch_size=8,
                augment="mixup",
                device="cpu",
                progress=False,
                loader_dtype=dtype,
                eval_splits=["val"],
                key_log=True,
            )
        )
        fingerprints.append(json.loads((out / "rank0.json").read_text())["param_sha256"])
    assert fingerprints[0] == fingerprints[1]
