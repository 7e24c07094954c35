"""Per-finding saliency: which findings an image's evidence is, one batched extractor call for every (image,
finding) pair — each map equal to the map computed alone — cached per sample and finding, and folded back into
images (maximum, union, every)."""

import contextlib

import torch
from torch import nn

from meddiffuse_stream.augment.cache import VariantCache
from meddiffuse_stream.augment.class_saliency import ClassMaps, evidence_classes, pair_confidence
from meddiffuse_stream.augment.providers import SaliencyProvider
from meddiffuse_stream.augment.saliency import SaliencyExtractor
from meddiffuse_stream.counters import Counters


class Quadrants(nn.Module):
    """Finding k's logit is the brightness of quadrant k: its gradient map lies in quadrant k."""

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        parts = [x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]]
        return torch.stack([(p**2).mean(dim=(1, 2, 3)) * 50 - 2 for p in parts], dim=1)


@contextlib.contextmanager
def saliency_calls(extractor):
    """The batch size of every forward pass the extractor's model makes inside the block."""
    calls: list[int] = []
    handle = extractor.model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        yield calls
    finally:
        handle.remove()


def test_positives_unknowns_believed_present_and_the_top_finding_of_an_image_without_any():
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 0]])
    probabilities = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.4, 0.3, 0.2], [0.1, 0.7, 0.2, 0.1], [0, 0.2, 0, 0.6]])
    owner, classes, present = evidence_classes(labels, mask, probabilities)
    pairs = list(zip(owner.tolist(), classes.tolist(), present.tolist(), strict=True))
    # row 0: its two positives; row 1: none, the teacher's top (finding 1) as absent; row 2: unknown finding 1
    # believed present (0.7); row 3: its positive and its unknown finding 3 (0.6)
    assert pairs == [(0, 0, True), (0, 2, True), (1, 1, False), (2, 1, True), (3, 1, True), (3, 3, True)]
    confidence = pair_confidence(probabilities, owner, classes, present)
    assert torch.allclose(confidence, torch.tensor([0.9, 0.2, 0.6, 0.7, 0.2, 0.6]))
    no_fallback = evidence_classes(labels, mask, probabilities, fallback=0)
    assert 1 not in no_fallback[0].tolist()


def test_one_extractor_call_per_batch_and_each_map_equals_its_own():
    torch.manual_seed(0)
    images = torch.rand(5, 1, 16, 16) * 0.3
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 4])
    classes = torch.tensor([0, 3, 1, 0, 1, 2, 3])
    extractor = SaliencyExtractor(Quadrants(), "gradients")
    with saliency_calls(extractor) as calls:
        maps = extractor.for_classes(images, owner, classes)
    assert calls == [7], "every pair of the batch in one call"
    assert maps.shape == (7, 1, 16, 16)
    for pair in range(len(owner)):
        alone = extractor(images[owner[pair] : owner[pair] + 1], classes[pair : pair + 1])
        assert torch.allclose(maps[pair], alone[0], atol=1e-6)
    h = 8
    quadrant = [(slice(0, h), slice(0, h)), (slice(0, h), slice(h, 16)), (slice(h, 16), slice(0, h))]
    for pair, finding in enumerate(classes.tolist()):
        if finding < 3:  # each finding's map peaks in its own quadrant
            rows, cols = quadrant[finding]
            assert maps[pair, 0, rows, cols].max() == maps[pair].max()


def test_maps_are_cached_per_sample_and_finding(tmp_path):
    images = torch.rand(3, 1, 16, 16)
    owner, classes = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0, 3, 1])
    keys, hashes = ["a", "b", "c"], ["ha", "hb", "hc"]
    cold = SaliencyProvider(Quadrants(), SaliencyExtractor(Quadrants(), "gradients"), None, Counters(), False)
    first = cold.class_maps(images, owner, classes, keys, lambda: hashes)
    cache = VariantCache(str(tmp_path / "cache"))
    warm = SaliencyProvider(Quadrants(), SaliencyExtractor(Quadrants(), "gradients"), cache, Counters(), True)
    stored = warm.class_maps(images, owner, classes, keys, lambda: hashes)
    assert torch.allclose(stored, first, atol=1e-3)  # float16 storage
    with saliency_calls(warm.extractor) as calls:
        again = warm.class_maps(images, owner[1:3], classes[1:3], keys, lambda: hashes)
        other = warm.class_maps(images, torch.tensor([0]), torch.tensor([1]), keys, lambda: hashes)
    assert calls == [1], "the two cached pairs were read, only the new finding of sample a was computed"
    assert torch.equal(again, stored[1:3]) and not torch.equal(other[0], stored[0])


def test_pairs_fold_back_into_images():
    maps = torch.zeros(4, 1, 2, 2)
    maps[0, 0, 0, 0], maps[1, 0, 1, 1], maps[2, 0, 0, 1], maps[3, 0, 1, 0] = 0.5, 1.0, 0.25, 0.75
    pairs = ClassMaps(
        owner=torch.tensor([0, 0, 2, 2]),
        classes=torch.tensor([1, 3, 0, 2]),
        present=torch.tensor([True, True, True, False]),
        maps=maps,
        confidence=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        count=3,
    )
    combined = pairs.combined()
    assert combined[0, 0].tolist() == [[0.5, 0.0], [0.0, 1.0]] and combined[1].sum() == 0
    assert combined[2, 0].tolist() == [[0.0, 0.25], [0.75, 0.0]]
    assert pairs.union(maps > 0)[:, 0].flatten(1).sum(1).tolist() == [2, 0, 2]
    assert pairs.every(torch.tensor([True, True, True, False])).tolist() == [True, False, False]
    assert pairs.any(torch.tensor([False, True, False, False])).tolist() == [True, False, False]
    assert pairs.has_pairs().tolist() == [True, False, True]
    taken = pairs.take(torch.tensor([2, 0]))
    assert taken.owner.tolist() == [0, 0, 1, 1] and taken.classes.tolist() == [0, 2, 1, 3]
    assert taken.count == 2 and torch.equal(taken.combined()[0], combined[2])
