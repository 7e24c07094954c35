"""CUDA tests: marked ``gpu`` and skipped without a CUDA device; ``make gpu-check`` runs them on a GPU machine and
collects the figures they measure (``record_figure``) into ``.bench/gpu.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset

HERE = Path(__file__).resolve().parent
NO_CUDA = "needs a CUDA device: `make gpu-check` runs these on a GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in this folder is a GPU test (the hook sees the whole session: only this folder's are marked)."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.gpu)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Demo data with lesion masks (ROI), 32 px: 96 train and 24 val samples in shards of 17."""
    root = tmp_path_factory.mktemp("gpu") / "demo"
    convert_dataset(
        DemoSource(n=120, size=32),
        None,
        str(root),
        ConvertOptions(splits={"train": 0.8, "val": 0.2}, shard_size=17),
        progress=False,
    )
    return str(root)


@pytest.fixture
def record_figure():
    """``record_figure(name, value)``: a measured figure for gpu-check's report (a no-op outside gpu-check)."""

    def record(name: str, value: float) -> None:
        path = os.environ.get("MEDDIFFUSE_GPU_FIGURES")
        if path:
            with open(path, "a") as stream:
                stream.write(json.dumps({name: value}) + "\n")

    return record
