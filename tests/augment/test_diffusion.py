"""The built-in generator: SDEdit variants, save/load round trip, seeds, and no downloads."""

from types import SimpleNamespace

import pytest
import torch

from meddiffuse_stream.augment.diffusion import (
    ClassConditionalGenerator,
    PipelineGenerator,
    load_generator,
    sdedit_timesteps,
)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return ClassConditionalGenerator.create(32, 1, 2, width=8, strength=0.5, steps=3)


def test_variants_are_images_and_depend_only_on_their_seed(generator):
    images, labels = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    variants = generator(images, labels, [1, 2, 3, 4])
    assert variants.shape == images.shape and 0 <= variants.min() and variants.max() <= 1
    alone = generator(images[2:3], labels[2:3], [3])
    assert torch.allclose(variants[2:3], alone, atol=1e-5), "a variant must not depend on its batch"
    assert not torch.allclose(generator(images, labels, [9, 2, 3, 4])[0], variants[0])


def test_save_and_load_keep_identity_and_outputs(generator, tmp_path):
    generator.save_pretrained(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen")
    assert (
        loaded.identity == generator.identity
        and (tmp_path / "gen" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    )
    images, labels = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    assert torch.allclose(loaded(images, labels, [5, 6]), generator(images, labels, [5, 6]), atol=1e-5)


def test_missing_models_are_clear_errors_not_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_generator(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        PipelineGenerator(tmp_path)


def test_sdedit_schedule_starts_at_strength_and_takes_the_stated_steps():
    assert sdedit_timesteps(0.4, 5) == [399, 319, 239, 159, 79]
    assert sdedit_timesteps(1.0, 4) == [999, 749, 499, 249]
    assert sdedit_timesteps(0.002, 5) == [1, 0], "never more steps than noise levels"
    with pytest.raises(ValueError, match="strength"):
        sdedit_timesteps(0.0, 5)
    with pytest.raises(ValueError, match="steps"):
        sdedit_timesteps(0.5, 0)


class _Recording(torch.nn.Module):
    """A UNet stand-in that predicts zero noise and records the timesteps it is asked about."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.config = SimpleNamespace(num_class_embeds=2)  # what the generator reads of a diffusers UNet

    def forward(self, sample, timestep, class_labels=None):
        self.calls.append(int(timestep))
        return type("Out", (), {"sample": torch.zeros_like(sample)})()


@pytest.mark.parametrize(("strength", "steps"), [(0.4, 5), (0.8, 3), (0.1, 2)])
def test_variants_honour_strength_and_steps(generator, strength, steps):
    recording = _Recording()
    model = ClassConditionalGenerator(recording, generator.scheduler, strength=strength, steps=steps)
    images = torch.full((2, 1, 8, 8), 0.25)
    out = model(images, torch.tensor([0, 1]), [1, 2])
    assert recording.calls == sdedit_timesteps(strength, steps) and len(recording.calls) == steps
    assert recording.calls[0] == round(strength * 1000) - 1
    # a model that predicts no noise: the first step's clean estimate is the noised image scaled back, so the
    # variant moves away from the input by about sqrt(1 - a) / sqrt(a) of unit noise — more with more strength
    alpha = generator.scheduler.alphas_cumprod[recording.calls[0]]
    expected = ((1 - alpha).sqrt() / alpha.sqrt()).item() / 2  # in [0, 1] units (half of [-1, 1])
    moved = (out - images).abs().mean().item()
    assert 0.3 * min(expected, 0.375) < moved, (moved, expected)


def test_identity_depends_on_the_steps(generator):
    other = ClassConditionalGenerator(generator.unet, generator.scheduler, strength=generator.strength, steps=7)
    assert other.identity != generator.identity


def test_the_moving_average_warms_up_instead_of_keeping_the_initial_weights():
    from meddiffuse_stream.jobs.train_generator import ema_decay

    assert ema_decay(0.995, 0) == 0.1 and ema_decay(0.995, 10) == 11 / 20
    decays = [ema_decay(0.995, n) for n in range(0, 5000, 50)]
    assert decays == sorted(decays) and decays[-1] == 0.995
    share_of_init = 1.0
    for n in range(344):  # the weight the random initial weights keep in the average after 344 steps
        share_of_init *= ema_decay(0.995, n)
    assert share_of_init < 1e-3


def test_multi_label_variants_are_conditioned_on_the_one_shared_class():
    torch.manual_seed(0)
    shared = ClassConditionalGenerator.create(16, 1, 1, width=8, strength=0.3, steps=2)
    findings = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert shared.class_labels(findings).tolist() == [0, 0]
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(shared(images, findings, [1, 2]), shared(images, torch.zeros(2, dtype=torch.long), [1, 2]))
    per_class = ClassConditionalGenerator.create(16, 1, 2, width=8, strength=0.3, steps=2)
    assert per_class.class_labels(torch.tensor([1, 0])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="conditioned on 2 classes, which cannot stand for a finding vector"):
        per_class(images, findings, [1, 2])
