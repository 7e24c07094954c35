"""Evidence metrics over a whole split: counted on the samples a method changed, ROI moved for geometry."""

import pytest
import torch

from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
from meddiffuse_stream.jobs.evidence import evidence_metrics
from meddiffuse_stream.models import SmallCNN


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    convert_dataset(
        DemoSource(n=48, size=32), None, str(root / "demo"), ConvertOptions(splits={"train": 1.0}), progress=False
    )
    return str(root / "demo")


def test_nothing_changed_means_nothing_measured(demo):
    metrics = evidence_metrics(demo, None)
    assert metrics["augmented_share"] == 0 and metrics["samples"] == 48
    assert metrics["roi_unchanged"] is None and metrics["w_roi"] is None


def test_mixup_overwrites_lesions_and_the_teacher_is_asked(demo):
    torch.manual_seed(0)
    metrics = evidence_metrics(demo, "mixup", teacher=SmallCNN(1, 2, width=4).eval(), seed=1)
    assert metrics["augmented_share"] == 1.0
    assert metrics["roi_unchanged"] < 0.2 and metrics["w_roi"] > 0.05 and metrics["roi_moved"] is None
    assert 0 <= metrics["label_consistency"] <= 1 and set(metrics["label_consistency_per_class"]) <= {
        "no_lesion",
        "lesion",
    }
    assert 0 <= metrics["saliency_iou"] <= 1


def test_standard_reports_roi_moved_not_unchanged(demo):
    metrics = evidence_metrics(demo, "standard", teacher=SmallCNN(1, 2, width=4).eval())
    assert metrics["roi_unchanged"] is None and metrics["saliency_iou"] is None
    assert 0 < metrics["roi_moved"] < 1
    assert metrics["w_roi"] == 0 and metrics["w_off"] == 0, "geometry brings in no foreign content"


def test_max_batches_bounds_the_pass(demo):
    assert evidence_metrics(demo, "cutmix", batch_size=16, max_batches=2)["samples"] == 32
