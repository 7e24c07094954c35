"""The multi-label objective and its metrics: an unknown finding adds nothing to the loss nor to its gradient, rare
findings get pos_weight from dataset.json's counts, and per-finding AUC / AP match their definitions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from meddiffuse_stream.jobs.metrics import metrics_table, multilabel_metrics
from meddiffuse_stream.jobs.objective import Objective, check_trainable, masked_bce_with_logits, objective_for
from meddiffuse_stream.shardfmt.manifest import parse_manifest

NAMES = ("Atelectasis", "Edema", "Hernia")


def _manifest(counts: dict[str, tuple[int, int, int]], task: str = "multi_label"):
    samples = sum(counts[NAMES[0]])
    labels = {n: dict(zip(("positive", "negative", "unknown"), c, strict=True)) for n, c in counts.items()}
    document = {
        "format_version": 1,
        "task": task,
        "class_names": list(NAMES),
        "label_mask": any(c[2] for c in counts.values()),
        "shards": [{"path": "train/train-000000.tar", "split": "train", "samples": samples}],
        "splits": {"train": {"samples": samples, "labels": labels}},
    }
    return parse_manifest(json.dumps(document).encode(), "ds/dataset.json")


def test_masked_bce_is_the_mean_over_known_labels_and_ignores_the_unknown():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=generator, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]])
    loss = masked_bce_with_logits(logits, targets, mask)
    p = torch.sigmoid(logits.detach())
    terms = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    assert loss.item() == pytest.approx(float((terms * mask).sum() / mask.sum()), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[mask == 0] == 0) and torch.all(logits.grad[mask == 1] != 0)
    flipped = targets.clone()
    flipped[mask == 0] = 1 - flipped[mask == 0]  # what an unknown label says must not matter
    assert masked_bce_with_logits(logits, flipped, mask).item() == pytest.approx(loss.item())
    nothing = masked_bce_with_logits(logits, targets, torch.zeros_like(mask))
    assert nothing.item() == 0 and nothing.requires_grad


def test_pos_weight_from_the_train_counts_and_what_the_loss_reads_from_a_batch():
    manifest = _manifest({"Atelectasis": (10, 80, 10), "Edema": (1, 99, 0), "Hernia": (0, 90, 10)})
    objective = objective_for(manifest, "weighted", "ds", torch.device("cpu"))
    assert objective.weight.tolist() == pytest.approx([8.0, 99.0, 1.0])  # no positive: left at 1
    assert objective_for(manifest, "ce", "ds", torch.device("cpu")).weight is None
    logits = torch.zeros(2, 3)
    batch = {"label": torch.ones(2, 3), "label_mask": torch.ones(2, 3)}
    plain = Objective("multi_label", NAMES)
    mixed = {**batch, "target": torch.zeros(2, 3), "target_mask": torch.tensor([[1.0, 0, 0], [0, 0, 0]])}
    assert plain.loss(logits, batch, torch.device("cpu")).item() == pytest.approx(np.log(2))
    assert plain.loss(logits, mixed, torch.device("cpu")).item() == pytest.approx(np.log(2))  # target wins
    weighted = objective.loss(torch.zeros(1, 3), {"label": torch.tensor([[1.0, 1, 1]])}, torch.device("cpu"))
    assert weighted.item() == pytest.approx(np.log(2) * (8 + 99 + 1) / 3)


def _pairwise_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    pairs = list(itertools.product(scores[positives], scores[~positives]))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def _average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def test_per_finding_auc_and_ap_use_known_labels_only_and_say_what_they_rest_on():
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, (40, 3)).astype(float)
    targets[:, 2] = 0  # no positive at all: no AUC, no AP
    mask = (rng.random((40, 3)) > 0.2).astype(float)
    scores = rng.random((40, 3))
    scores[:10, 0] = 0.5  # ties count half in the AUC
    metrics = multilabel_metrics(targets, mask, scores, NAMES)
    for k, name in enumerate(NAMES[:2]):
        known = mask[:, k] > 0
        positives = targets[known, k] > 0
        entry = metrics["per_class"][name]
        assert (entry["positive"], entry["negative"], entry["unknown"]) == (
            int(positives.sum()),
            int((~positives).sum()),
            int((~known).sum()),
        )
        assert entry["auc"] == pytest.approx(_pairwise_auc(scores[known, k], positives))
        if k == 1:  # AP's step-wise definition, on scores without ties
            assert entry["ap"] == pytest.approx(_average_precision(scores[known, k], positives))
    assert metrics["auc_per_class"]["Hernia"] is None and metrics["ap_per_class"]["Hernia"] is None
    assert metrics["macro_auc"] == pytest.approx(np.mean([metrics["auc_per_class"][n] for n in NAMES[:2]]))
    assert metrics["roc_auc"] == metrics["macro_auc"] and metrics["task"] == "multi_label"
    table = metrics_table({"val": metrics})
    assert table.startswith("val: macro AUC") and "Hernia" in table and "n/a" in table


def test_a_perfect_and_an_inverted_model():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], float)
    perfect = multilabel_metrics(targets, None, targets * 0.8 + 0.1, NAMES[:2])
    inverted = multilabel_metrics(targets, None, 1 - targets, NAMES[:2])
    assert perfect["macro_auc"] == 1.0 and perfect["macro_ap"] == 1.0 and inverted["macro_auc"] == 0.0


def test_what_cannot_be_trained_is_said_before_training():
    manifest = _manifest({"Atelectasis": (0, 90, 10), "Edema": (0, 100, 0), "Hernia": (100, 0, 0)})
    with pytest.raises(ValueError, match="no finding of the train split has both positive and negative"):
        check_trainable(manifest, "ds", None)
    good = _manifest({"Atelectasis": (5, 90, 5), "Edema": (0, 100, 0), "Hernia": (1, 99, 0)})
    check_trainable(good, "ds", "none")
    for method in ("mixup", "cutmix", "saliencymix", "meddiffusemix", "meddiffusemix-hard-mask", "stage"):
        check_trainable(good, "ds", method)  # the methods that mix finding vectors, or protect every finding
    for method in ("dafusion", "diffusemix", "hybrid-filter"):
        with pytest.raises(
            ValueError,
            match=rf"ds: augment '{method}' does not run on multi-label data: "
            r"diffusemix, hybrid-filter, dafusion are refused there .* conditioned on no finding",
        ):
            check_trainable(good, "ds", method)
