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


def test_strength_is_measured_beside_the_evidence(demo):
    metrics = evidence_metrics(demo, "mixup", seed=1)
    assert metrics["delta_off"] > 2 and 0.3 < metrics["moved_off"] <= 1 and metrics["ssim"] < 0.95
    assert metrics["protected_share"] is None and metrics["protected_to_lesion"] is None, "mixup protects nothing"
    assert 0 <= metrics["untouched_share"] < 0.5
    unchanged = evidence_metrics(demo, None)
    assert unchanged["delta_off"] is None and unchanged["ssim"] is None, "nothing changed, nothing measured"


def test_keepaugment_reports_its_protected_box(demo):
    torch.manual_seed(0)
    teacher = SmallCNN(1, 2, width=4).eval()
    from meddiffuse_stream.augment import AugmentStage

    stage = AugmentStage("keepaugment", 2, teacher=teacher, saliency_method="gradients")
    metrics = evidence_metrics(demo, stage, teacher=teacher)
    side = round(0.375 * 32)
    assert metrics["protected_share"] == pytest.approx(side * side / 32**2)
    assert metrics["protected_to_lesion"] > 1 and metrics["delta_off"] > 1


def test_the_originals_maps_come_from_the_stages_cache_with_the_same_result(demo, tmp_path):
    from meddiffuse_stream.augment import AugmentStage

    torch.manual_seed(0)
    teacher = SmallCNN(1, 2, width=4).eval()

    def run(cache):
        stage = AugmentStage("keepaugment", 2, teacher=teacher, saliency_method="gradients", variant_cache=cache)
        return evidence_metrics(demo, stage, teacher=teacher, saliency_method="gradients"), stage.counters

    plain, _ = run(None)
    cached, counters = run(str(tmp_path / "cache"))
    # the stage made each map once; the evidence pass read the originals' maps back instead of extracting them
    assert counters["cache_written"] == 48 and counters["cache_hits"] == 48
    assert cached["saliency_iou"] == pytest.approx(plain["saliency_iou"], abs=0.02)  # float16 storage
    assert cached["label_consistency"] == plain["label_consistency"]
    other, counters = run(str(tmp_path / "cache"))
    assert counters["cache_hits"] == 96 and other["saliency_iou"] == cached["saliency_iou"]


def test_ssim_is_one_for_identical_images_and_low_for_unrelated_ones():
    from meddiffuse_stream.jobs.similarity import ssim

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 32, 32, generator=generator)
    assert torch.allclose(ssim(images, images), torch.ones(3))
    assert (ssim(images, torch.rand(3, 1, 32, 32, generator=generator)) < 0.2).all()
    assert (ssim(images, (images + 0.02).clamp(0, 1)) > 0.9).all()
    with pytest.raises(ValueError, match="one shape"):
        ssim(images, images[:, :, :16])


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    from meddiffuse_stream.jobs.variant_quality import frechet_distance

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=generator)
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(features, features + 1.0)
    assert shifted == pytest.approx(8.0, rel=1e-6), "a mean shift of 1 in 8 dimensions costs |Δμ|² = 8"
    wider = frechet_distance(features, features * 2)
    assert wider > 1 and frechet_distance(features, features * 3) > wider


def test_variant_quality_measures_fidelity_distance_and_spread(demo):
    from meddiffuse_stream.augment import AugmentStage
    from meddiffuse_stream.jobs.variant_quality import variant_quality

    class Shift:
        identity, strength = "shift", 0.5

        def to(self, device):
            return self

        def __call__(self, images, labels, seeds):  # variant v of a sample: brighter by (seed % 7) / 255
            offsets = torch.tensor([(s % 7) / 255 for s in seeds]).view(-1, 1, 1, 1)
            return (images + offsets).clamp(0, 1)

    torch.manual_seed(0)
    stage = AugmentStage("dafusion", 2, generator=Shift(), variants_per_sample=3)
    report = variant_quality(demo, stage, SmallCNN(1, 2, width=4).eval())
    assert 0 < report["distance"] <= 6.5 and 0 < report["spread"] <= 6.5 and report["samples"] == 48
    assert set(report["accuracy"]) <= {"original:lesion", "original:no_lesion", "variant:lesion", "variant:no_lesion"}
    assert report["frechet"] >= 0 and report["frechet_real"] >= 0
