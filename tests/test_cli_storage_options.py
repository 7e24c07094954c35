"""``--storage-option`` on the commands that read a dataset (train, train-diffusion, preview): a SeaweedFS dataset
reached only through those options — no AWS_* variable set — trains, previews and trains a generator; without
them the same command stops with one line naming the missing credentials."""

from __future__ import annotations

import json

import pytest
import s3fs
import torch
from PIL import Image

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator
from meddiffuse_stream.cli import main
from meddiffuse_stream.models import SmallCNN

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture
def remote(tmp_path, s3_server, s3_bucket, monkeypatch) -> tuple[str, list[str]]:
    """A demo dataset on the server, and the --storage-option flags that reach it; no identity in the environment."""
    convert_dataset(
        DemoSource(n=64, size=16),
        None,
        f"{s3_bucket}/demo",
        ConvertOptions(splits={"train": 0.75, "val": 0.25}),
        storage_options=s3_server.storage_options,
        progress=False,
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    flags = []
    for pair in (
        f"endpoint_url={s3_server.endpoint}",
        "key=meddiffuse-test",
        "secret=meddiffuse-test-secret",
    ):
        flags += ["--storage-option", pair]
    return f"{s3_bucket}/demo", flags


def test_train_reads_a_dataset_given_only_by_storage_options(remote, tmp_path, capsys):
    url, flags = remote
    common = ["--epochs", "1", "--batch-size", "16", "--model", "cnn-small", "--quiet"]
    assert main(["train", url, "--out", str(tmp_path / "run"), *common, *flags]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "val" in metrics, metrics  # 48 train samples in batches of 16; val from S3
    half = ["--train-fraction", "0.5", *flags]  # the patient-level subset is read from S3 too
    assert main(["train", url, "--out", str(tmp_path / "half"), *common, *half]) == 0
    capsys.readouterr()
    assert main(["train", url, "--out", str(tmp_path / "none"), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{url}/dataset.json" in err and "no credentials found" in err, err


def test_preview_and_train_diffusion_take_storage_options(remote, tmp_path, s3_bucket):
    url, flags = remote
    torch.manual_seed(0)
    torch.save({"model": SmallCNN(1, 2).state_dict()}, tmp_path / "teacher.pt")
    ClassConditionalGenerator.create(16, 1, 2, width=8, steps=2).save_pretrained(tmp_path / "gen")
    models = ["--teacher", str(tmp_path / "teacher.pt"), "--generator", str(tmp_path / "gen")]
    cache = ["--variant-cache", f"{s3_bucket}/variants"]  # on the server as well, through the same options
    picture = tmp_path / "p.png"
    args = ["preview", url, "--augment", "meddiffusemix", "-n", "2", "-o", str(picture), *models, *cache, *flags]
    assert main(args) == 0
    assert Image.open(picture).size == (800, 320)  # 5 panels x 2 rows at 2 inches, 80 dpi
    variants = s3fs.S3FileSystem(
        key="meddiffuse-test",
        secret="meddiffuse-test-secret",
        client_kwargs={"endpoint_url": flags[1].split("=", 1)[1]},
    ).find(f"{s3_bucket}/variants")
    assert variants, "the variant cache was written on the server"
    out = tmp_path / "generator"
    generator = ["--epochs", "1", "--batch-size", "16", "--width", "8", "--steps", "2", "--quiet"]
    assert main(["train-diffusion", url, str(out), *generator, *flags]) == 0
    assert (out / "meddiffuse_generator.json").exists()
