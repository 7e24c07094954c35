"""Reading a converted dataset back in the tests, with nothing but tarfile, json and pyarrow."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def load_dataset(root: Path) -> dict:
    info = json.loads((root / "dataset.json").read_text())
    index = pq.read_table(root / "index.parquet").to_pylist()
    rejects = [json.loads(line) for line in (root / "rejects.jsonl").read_text().splitlines()]
    samples = {}
    for shard in info["shards"]:
        with tarfile.open(root / shard["path"]) as archive:
            for member in archive.getmembers():
                key, _, suffix = member.name.partition(".")
                samples.setdefault(key, {"shard": shard["path"]})[suffix] = archive.extractfile(member).read()
    return {"info": info, "index": index, "rejects": rejects, "samples": samples}


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.uint16) if image.mode.startswith("I") else np.asarray(image)


def check_accounting(dataset: dict) -> None:
    counts = dataset["info"]["counts"]
    assert counts["converted"] + counts["rejected"] == counts["found"]
    assert counts["converted"] == len(dataset["index"]) == len(dataset["samples"])
    assert counts["rejected"] == len(dataset["rejects"])
    assert sum(s["samples"] for s in dataset["info"]["shards"]) == counts["converted"]
    for key, sample in dataset["samples"].items():
        assert {"png", "cls", "json"} <= set(sample), key
        assert json.loads(sample["json"])["key"] == key
