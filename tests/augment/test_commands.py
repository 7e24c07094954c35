"""train-diffusion and warm-cache as a user runs them; a warm cache means zero generator calls in training."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meddiffuse_stream import ConvertOptions, DemoSource, MedDiffuseLoader, convert_dataset
from meddiffuse_stream.augment import AugmentStage
from meddiffuse_stream.augment.diffusion import load_generator

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "meddiffuse_stream.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_train_then_warm_in_two_parts_then_no_generator_call(tmp_path):
    data = tmp_path / "demo"
    convert_dataset(DemoSource(n=48, size=16), None, str(data), ConvertOptions(splits={"train": 1.0}), progress=False)
    trained = _cli(
        "train-diffusion",
        str(data),
        str(tmp_path / "gen"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--width",
        "8",
        "--steps",
        "2",
        "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    assert "saved to" in trained.stdout and (tmp_path / "gen" / "meddiffuse_generator.json").exists()
    cache = str(tmp_path / "cache")
    for index in ("0", "1"):  # an Indexed Job of two completions
        job = {"JOB_COMPLETION_INDEX": index, "JOB_COMPLETIONS": "2"}
        part = _cli(
            "warm-cache",
            str(data),
            "--generator",
            str(tmp_path / "gen"),
            "--cache",
            cache,
            "--variants",
            "2",
            "--batch-size",
            "16",
            "--quiet",
            env=job,
        )
        assert part.returncode == 0, part.stderr
        assert "samples 24  generated 48" in part.stdout
    again = _cli(
        "warm-cache",
        str(data),
        "--generator",
        str(tmp_path / "gen"),
        "--cache",
        cache,
        "--variants",
        "2",
        "--index",
        "0",
        "--count",
        "1",
        "--quiet",
    )
    assert "generated 0  already cached 96" in again.stdout

    generator = load_generator(tmp_path / "gen")
    calls = []
    original = generator.__call__

    class Counting:
        identity, strength = generator.identity, generator.strength

        def to(self, device):
            return self

        def __call__(self, *args):
            calls.append(1)
            return original(*args)

    stage = AugmentStage(
        "dafusion", 2, generator=Counting(), variant_cache=cache, variants_per_sample=2, original_probability=0.0
    )
    with MedDiffuseLoader(str(data), 16, augment=stage, as_dict=True) as loader:
        batches = list(loader)
    assert len(batches) == 3 and not calls and stage.counters["cache_hits"] == 48
    assert all(torch.isfinite(b["image"]).all() for b in batches)
