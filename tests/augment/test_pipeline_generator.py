"""The real-model path: PipelineGenerator on a tiny, randomly initialised Stable Diffusion img2img pipeline built
from configs in a temporary folder (no download), as a user's local pipeline folder would be read."""

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the img2img pipeline's text encoder comes from transformers")


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4,
        sample_size=32,
    )
    # a tokenizer from a vocabulary written here: the characters, the end-of-word forms, and the special tokens
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: index for index, token in enumerate(letters + [f"{c}</w>" for c in letters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    pipeline = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def test_a_local_img2img_pipeline_makes_seeded_grey_variants(pipeline_folder):
    from meddiffuse_stream.augment.diffusion import PipelineGenerator, load_generator

    generator = load_generator(pipeline_folder, prompts=["mri", "ct"], strength=0.6, steps=4)
    assert isinstance(generator, PipelineGenerator) and generator.identity.startswith("pipeline-")
    images, labels = torch.rand(3, 1, 32, 32), torch.tensor([0, 1, 0])
    first = generator(images, labels, [1, 2, 3])
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.allclose(generator(images, labels, [1, 2, 3]), first), "the same seeds, the same variants"
    assert not torch.allclose(generator(images, labels, [4, 2, 3])[0], first[0]), "another seed, another variant"
    other = load_generator(pipeline_folder, prompts=["x-ray"], strength=0.6, steps=4)
    assert other.identity != generator.identity, "the prompts are part of the identity"


def test_pipeline_strength_changes_the_variant(pipeline_folder):
    from meddiffuse_stream.augment.diffusion import PipelineGenerator

    images, labels = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    light = PipelineGenerator(pipeline_folder, strength=0.3, steps=4)(images, labels, [5, 6])
    heavy = PipelineGenerator(pipeline_folder, strength=0.9, steps=4)(images, labels, [5, 6])
    assert not torch.allclose(light, heavy)
