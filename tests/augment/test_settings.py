"""Settings are typed where they enter: MixConfig and StageSettings refuse bad names and kinds once, presets merge
in one place, and the teacher handle hands weights over between batches."""

import pytest
import torch

from meddiffuse_stream.augment import AugmentStage, MixConfig
from meddiffuse_stream.augment.settings import StageSettings, mix_for
from meddiffuse_stream.models import SmallCNN


def test_mix_config_from_plain_values_refuses_unknown_names_and_wrong_kinds():
    assert MixConfig.from_mapping({"quantile": 0.8, "margin": 2}) == MixConfig(quantile=0.8, margin=2)
    with pytest.raises(ValueError, match=r"where: unknown mix setting\(s\) \['quantil'\]"):
        MixConfig.from_mapping({"quantil": 0.8}, "where")
    with pytest.raises(ValueError, match=r"quantile must be a float, got .0\.8."):
        MixConfig.from_mapping({"quantile": "0.8"})
    with pytest.raises(ValueError, match="check must be a bool"):
        MixConfig(check=1)
    with pytest.raises(ValueError, match="retries must be a int, got True"):
        MixConfig(retries=True)
    assert MixConfig(alpha_max=1).alpha_max == 1, "a whole number is a float"


def test_a_preset_is_merged_under_the_users_settings_in_one_place():
    assert mix_for("meddiffusemix-hard-mask") == MixConfig(soft_mask=False)
    assert mix_for("meddiffusemix-no-margin", {"quantile": 0.9}) == MixConfig(margin=0, quantile=0.9)
    with pytest.raises(ValueError, match=r"\['margin'\] set by preset 'meddiffusemix-no-margin' itself"):
        mix_for("meddiffusemix-no-margin", {"margin": 2})
    settings = StageSettings.for_method("meddiffusemix-hard-mask", {"mix": {"peak": 0.5}, "mask_draws": 3})
    assert settings.mix == MixConfig(soft_mask=False, peak=0.5) and settings.mask_draws == 3
    with pytest.raises(ValueError, match="unknown augment method"):
        mix_for("meddiffusemix-soft")


def test_stage_settings_refuse_what_they_cannot_run():
    with pytest.raises(ValueError, match=r"here: unknown setting\(s\) \['variants'\]"):
        StageSettings.for_method("meddiffusemix", {"variants": 2}, "here")
    with pytest.raises(ValueError, match="mask_draws must be a whole number"):
        StageSettings(mask_draws=0)
    with pytest.raises(ValueError, match="saliency_method must be one of"):
        StageSettings(saliency_method="lime")
    with pytest.raises(ValueError, match="mix must be a MixConfig"):
        StageSettings(mix={"quantile": 0.8})
    with pytest.raises(ValueError, match="compose_standard must be true or false"):
        StageSettings(compose_standard="yes")


def test_the_stage_takes_its_settings_object_and_keywords_replace_fields_of_it():
    settings = StageSettings(mask_draws=3, mix=MixConfig(quantile=0.9))
    stage = AugmentStage("cutmix", 2, settings=settings)
    assert stage.settings is settings and stage.mask_draws == 3 and stage.mix_config.quantile == 0.9
    shorthand = AugmentStage("cutmix", 2, settings=settings, mask_draws=4, mix_config=MixConfig(peak=0.5))
    assert shorthand.settings == StageSettings(mask_draws=4, mix=MixConfig(peak=0.5))
    with pytest.raises(TypeError, match="unexpected keyword"):
        AugmentStage("cutmix", 2, mask_draw=2)
    with pytest.raises(ValueError, match="AugmentStage: variants_per_sample"):
        AugmentStage("cutmix", 2, variants_per_sample=0)


def test_a_preset_with_settings_that_lost_it_is_refused(tmp_path):
    from meddiffuse_stream import ConvertOptions, DemoSource, convert_dataset
    from meddiffuse_stream.jobs.stage_factory import build_stage

    convert_dataset(DemoSource(n=8, size=16), None, str(tmp_path / "d"), ConvertOptions(splits={"train": 1.0}))
    torch.save({"model": SmallCNN(1, 2).state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="does not carry preset 'meddiffusemix-hard-mask'"):
        build_stage(
            "meddiffusemix-hard-mask",
            str(tmp_path / "d"),
            teacher=str(tmp_path / "t.pt"),
            variant_cache=str(tmp_path / "c"),
            settings=StageSettings(),
        )
    stage = build_stage(
        "meddiffusemix-hard-mask",
        str(tmp_path / "d"),
        teacher=str(tmp_path / "t.pt"),
        variant_cache=str(tmp_path / "c"),
    )
    assert stage.mix_config.soft_mask is False


def test_teacher_handle_applies_offered_weights_only_between_batches():
    torch.manual_seed(0)
    teacher, student = SmallCNN(1, 2, width=4), SmallCNN(1, 2, width=4)
    stage = AugmentStage("saliencymix", 2, teacher=teacher, refresh_every=2, saliency_method="gradients")
    handle = stage.teacher_handle
    before = handle.provider.teacher_identity
    assert not handle.maybe_refresh(student, 1) and handle.maybe_refresh(student, 2)
    assert handle.provider.teacher_identity == before, "nothing is loaded until the stage's next batch"
    assert stage.teacher_identity != before, "but the identity is the one the next batch will use"
    images = torch.rand(2, 1, 16, 16)
    stage({"image": images, "label": torch.tensor([0, 1]), "key": ["a", "b"]})
    assert handle.provider.teacher_identity == stage.teacher_identity != before
    with pytest.raises(ValueError, match="refresh_every needs a teacher"):
        AugmentStage("cutmix", 2, refresh_every=3)
