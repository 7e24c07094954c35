"""The built-in generator: SDEdit variants, save/load round trip, seeds, and no downloads."""

import pytest
import torch

from meddiffuse_stream.augment.diffusion import ClassConditionalGenerator, PipelineGenerator, load_generator


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
