"""Evidence metrics per finding: ROI kept and W per finding's own ROI, the teacher's agreement per finding with
the (mixed) known targets, saliency IoU per positive finding — on hand-made batches whose answers are known, and
over a whole multi-finding phantom through evidence_metrics."""

import pytest
import torch
from torch import nn

from meddiffuse_stream.augment.saliency import SaliencyExtractor
from meddiffuse_stream.convert import ConvertOptions, convert_dataset
from meddiffuse_stream.jobs.demo_findings import FINDINGS, FindingsSource
from meddiffuse_stream.jobs.evidence import evidence_metrics
from meddiffuse_stream.jobs.evidence_findings import finding_metrics, finding_roi_sums, finding_teacher_sums

NAMES = ["a", "b", "c"]


class Sums:
    def __init__(self):
        self.values = {}

    def add(self, name, numerator, denominator):
        old = self.values.get(name, [0.0, 0.0])
        self.values[name] = [old[0] + numerator, old[1] + denominator]

    def ratio(self, name):
        numerator, denominator = self.values.get(name, (0.0, 0.0))
        return numerator / denominator if denominator else None


def _rois():
    rois = torch.zeros(2, 3, 8, 8)
    rois[0, 0, :2, :4] = 1  # 8 pixels of a on image 0
    rois[0, 1, 4:, :] = 1  # 32 pixels of b on image 0
    rois[1, 1, :4, :4] = 1  # 16 pixels of b on image 1; nobody has c
    return rois


def test_roi_kept_and_w_are_counted_on_each_finding_own_pixels():
    original = torch.zeros(2, 1, 8, 8)
    image, weight = original.clone(), torch.zeros(2, 1, 8, 8)
    image[0, :, :1, :4] = 0.5  # half of a's pixels changed on image 0
    image[0, :, 4:, :2] = 0.5  # 8 of b's 32 pixels on image 0
    weight[1, :, :4, :4] = 0.25  # W on b's pixels of image 1, the pixels themselves unchanged
    sums = Sums()
    finding_roi_sums(sums, {"rois": _rois()}, image, original, weight, torch.arange(2), NAMES)
    metrics = finding_metrics(sums, NAMES)
    assert metrics["roi_unchanged:a"] == pytest.approx(0.5)
    assert metrics["roi_unchanged:b"] == pytest.approx((24 + 16) / 48)
    assert metrics["w_roi:a"] == 0 and metrics["w_roi:b"] == pytest.approx(0.25 * 16 / 48)
    assert "roi_unchanged:c" not in metrics, "a finding no changed image carries is not measured"
    moved = {"rois": _rois().roll(1, dims=-1), "original_rois": _rois()}
    sums = Sums()
    finding_roi_sums(sums, moved, image, original, weight, torch.arange(2), NAMES)
    assert finding_metrics(sums, NAMES)["roi_moved:a"] == pytest.approx(2 / 8)


class Fixed(nn.Module):
    """Logits chosen per image (read from a marker pixel: image i has i / 10 in its last pixel), so they follow an
    image wherever it sits in a batch; the input gradient follows brightness (saliency on the bright square)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        which = (x[:, 0, -1, -1] * 10).round().long()
        return self.logits[which] + (x**2).flatten(1).sum(1, keepdim=True) * 1e-3


def test_teacher_agreement_is_per_finding_over_known_targets_and_iou_per_positive_finding():
    images = torch.zeros(2, 1, 8, 8)
    images[:, :, :3, :3] = 1
    images[1, 0, -1, -1] = 0.1
    teacher = Fixed(torch.tensor([[5.0, -5.0, 5.0], [-5.0, -5.0, 5.0]]))  # predicts a,c / c
    batch = {
        "label": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
        "target": torch.tensor([[0.7, 0.0, 0.2], [0.0, 0.6, 1.0]]),  # mixed: rounded a,-,- / -,b,c
        "target_mask": torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]),  # b unknown on image 1
        "label_mask": torch.ones(2, 3),
    }
    sums = Sums()
    extractor = SaliencyExtractor(teacher, "gradients")
    finding_teacher_sums(sums, batch, teacher, extractor, images, images.clone(), torch.arange(2), NAMES)
    metrics = finding_metrics(sums, NAMES)
    assert metrics["label_consistency:a"] == 1.0 and metrics["label_consistency:b"] == 1.0
    assert metrics["label_consistency:c"] == 0.5  # image 0: target 0.2 -> absent, predicted present
    assert sums.ratio("label_consistency") == pytest.approx(4 / 5)
    assert metrics["saliency_iou:a"] == 1.0 and metrics["saliency_iou:b"] == 1.0 and metrics["saliency_iou:c"] == 1.0


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "ds"
    convert_dataset(FindingsSource(n=40, size=24, seed=2), None, str(out), ConvertOptions(), progress=False)
    return out


def test_evidence_metrics_report_every_finding_on_a_phantom(phantom):
    mixup = evidence_metrics(str(phantom), "mixup", split="train", batch_size=16)
    for name in FINDINGS:
        assert mixup[f"roi_unchanged:{name}"] < 0.5 and 0 < mixup[f"w_roi:{name}"] < 1
    assert mixup["augmented_share"] == 1 and mixup["delta_off"] > 0
    none = evidence_metrics(str(phantom), None, split="train", batch_size=16)
    assert none["augmented_share"] == 0 and not any(":" in key for key in none)
