"""The README's custom graph: stages inside worker processes, an image-only transform, a filter, and
torchdata.nodes.Loader on top with exact resume; and the default graph MedDiffuseLoader exposes."""

import functools
import os

import torch
from loader_helpers import uneven_dataset
from torchdata.nodes import Loader

from meddiffuse_stream import MedDiffuseLoader, nodes


def window(sample):
    """Runs in the worker: the key says which process ran it."""
    return dict(sample, image=((sample["image"] - 0.1) / 0.8).clamp(0, 1), key=f"{sample['key']}@{os.getpid()}")


def mirror(image):
    return image.flip(-1)


def not_seven(sample):
    return not sample["key"].split("@")[0].endswith("7")


def _graph(source, shuffle=True):
    epochs = nodes.EpochSource([s.samples for s in source.shards], 8, seed=0, num_workers=2, shuffle=shuffle)
    chain = nodes.WorkerChain(
        source,
        nodes.DecodeOptions(num_classes=len(source.class_names)),
        stages=(
            functools.partial(nodes.Map, fn=window),
            functools.partial(nodes.ImageMap, fn=mirror),
            functools.partial(nodes.Filter, predicate=not_seven, kind="sevens"),
        ),
    )
    return nodes.Workers(epochs, chain), nodes.ToTorch


def test_readme_custom_graph(tmp_path):
    dataset = uneven_dataset(tmp_path, samples=103, shard_size=10)
    source = nodes.open_dataset(str(dataset), "train")
    workers, to_torch = _graph(source)
    loader = Loader(to_torch(workers))
    epochs = [[list(b["key"]) for b in loader] for _ in range(2)]
    pids = {k.split("@")[1] for batches in epochs for b in batches for k in b}
    assert pids and str(os.getpid()) not in pids and pids <= {str(p) for p in workers.pool.pids}
    assert all(not k.split("@")[0].endswith("7") for batches in epochs for b in batches for k in b)
    assert workers.counters["skipped:sevens"] == 2 * 10 and workers.counters["padded"] == 2 * 10
    with MedDiffuseLoader(str(dataset), 8, shuffle=False, as_dict=True, num_workers=2) as plain:
        first = next(iter(plain))
    ordered, _ = _graph(source, shuffle=False)
    batch = next(iter(Loader(to_torch(ordered))))
    keep = ~batch["is_padding"]  # a dropped seven's slot holds a stand-in
    assert [k.split("@")[0] for k, kept in zip(batch["key"], keep, strict=True) if kept] == [
        k for k in first["key"] if not k.endswith("7")
    ]
    expected = ((first["image"] - 0.1) / 0.8).clamp(0, 1).flip(-1)
    assert torch.allclose(batch["image"][keep], expected[keep]), "Map then ImageMap ran on the decoded images"

    interrupted = Loader(to_torch(_graph(source)[0]))
    iterator = iter(interrupted)
    for _ in range(4):
        next(iterator)
    state = interrupted.state_dict()
    resumed = Loader(to_torch(_graph(source)[0]))
    resumed.load_state_dict(state)
    strip = lambda batches: [[k.split("@")[0] for k in b] for b in batches]  # noqa: E731
    assert strip([list(b["key"]) for b in resumed]) == strip(epochs[0][4:])
    assert strip([list(b["key"]) for b in resumed]) == strip(epochs[1])
    for each in (workers, ordered):
        each.close()


def test_the_loader_exposes_its_default_graph(tmp_path):
    dataset = str(uneven_dataset(tmp_path, samples=40, shard_size=10))
    with MedDiffuseLoader(dataset, 8, num_workers=2, as_dict=True, seed=3) as loader:
        expected = [list(b["key"]) for b in loader]
        assert isinstance(loader.root, nodes.ToTorch) and isinstance(loader.graph.workers, nodes.Workers)
        loader.graph.epochs.set_epoch(0)
        assert [list(b["key"]) for b in Loader(loader.root)] == expected
