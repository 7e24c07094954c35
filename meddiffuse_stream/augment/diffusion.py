"""Label-consistent diffusion variants with diffusers: a small class-conditional UNet used SDEdit-style, or any
local img2img pipeline. Nothing is downloaded: every model comes from a local folder, and a missing one is an error
that says so.

SDEdit: noise the image to ``strength · T`` (default 0.5 of the T = 1000 training timesteps), then take exactly
``steps`` deterministic DDIM steps to the clean image, conditioned on the image's own label, so the variant keeps the
class while its texture and background change (:func:`sdedit_timesteps`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ClassConditionalGenerator", "PipelineGenerator", "load_generator", "sdedit_timesteps"]

GENERATOR_FILE = "meddiffuse_generator.json"
SAMPLER = "sdedit-ddim-v2"  # v2: noised to strength · T, then exactly ``steps`` DDIM steps


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found at {path}: models are never downloaded at run time; train one with "
        "`meddiffuse-stream train-diffusion DATASET OUT` or point to a local diffusers folder"
    )


class ClassConditionalGenerator:
    """A ``UNet2DModel`` with ``num_class_embeds`` and a DDIM scheduler."""

    kind = "unet-sdedit"
    _identity: str | None = None  # computed on first use, forgotten when the weights change

    def __init__(self, unet: Any, scheduler: Any, *, strength: float = 0.5, steps: int = 10) -> None:
        sdedit_timesteps(strength, steps)  # the same checks, at construction
        self.unet = unet
        self.scheduler = scheduler
        self.strength = strength
        self.steps = steps
        self._identity: str | None = None

    @classmethod
    def create(cls, image_size: int, channels: int, num_classes: int, *, width: int = 32, **kwargs: Any):
        """A fresh, untrained generator small enough for CPU training at 32–64 px."""
        from diffusers import DDIMScheduler, UNet2DModel

        unet = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=1,
            block_out_channels=(width, width * 2),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=num_classes,
            norm_num_groups=8,
        )
        return cls(unet, DDIMScheduler(num_train_timesteps=1000), **kwargs)

    @property
    def identity(self) -> str:
        """Generator id and version: a hash of the configuration and the weights, computed once (a generator is
        frozen while it serves variants; ``forget_identity()`` after changing its weights)."""
        identity = getattr(self, "_identity", None)  # generators unpickled from older versions lack the attribute
        if identity is None:
            identity = self._identity = self._compute_identity()
        return identity

    def forget_identity(self) -> None:
        self._identity = None

    def _compute_identity(self) -> str:
        config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}  # not paths or versions
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        digest.update(f"{SAMPLER}|steps={self.steps}".encode())  # the sampler and its steps shape every variant
        for tensor in self.unet.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.kind}-{digest.hexdigest()[:12]}"

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        self.scheduler.save_pretrained(directory / "scheduler")
        info = {"kind": self.kind, "strength": self.strength, "steps": self.steps, "identity": self.identity}
        (directory / GENERATOR_FILE).write_text(json.dumps(info, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> ClassConditionalGenerator:
        from diffusers import DDIMScheduler, UNet2DModel

        directory = Path(directory)
        if not (directory / GENERATOR_FILE).exists():
            raise _missing(directory, "a meddiffuse generator (meddiffuse_generator.json)")
        info = json.loads((directory / GENERATOR_FILE).read_text())
        unet = UNet2DModel.from_pretrained(
            directory / "unet", local_files_only=True, low_cpu_mem_usage=False
        )  # safetensors weights; no accelerate needed
        scheduler = DDIMScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
        settings = {"strength": info["strength"], "steps": info["steps"], **overrides}
        return cls(unet, scheduler, **settings)

    def to(self, device: torch.device | str) -> ClassConditionalGenerator:
        self.unet.to(device)
        return self

    def class_labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The class embedding each image is generated with: its class index; on multi-label data (finding vectors
        ``(B, C)``) the one class a generator trained on a multi-label dataset has — its variants are conditioned
        on no finding (``train-diffusion`` trains such a generator with a single shared class). A generator of
        several classes cannot say which one a finding vector is: refused."""
        classes = self.unet.config.num_class_embeds
        if labels.dim() == 1 or classes is None:
            return labels if classes is not None else None
        if classes != 1:
            raise ValueError(
                f"generator {self.identity} is conditioned on {classes} classes, which cannot stand for a finding "
                "vector: train one on the multi-label dataset (`meddiffuse-stream train-diffusion DATASET OUT` "
                "trains a single shared class there: variants conditioned on no finding)"
            )
        return torch.zeros(len(labels), dtype=torch.long, device=labels.device)

    def timesteps(self) -> list[int]:
        """The denoising timesteps, highest first: ``steps`` of them, evenly spaced below ``strength · T``."""
        return sdedit_timesteps(self.strength, self.steps, self.scheduler.config.num_train_timesteps)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Variants of ``images`` in [0, 1]: noised to ``strength · T``, then ``steps`` deterministic DDIM steps
        (eta 0) to t = 0. Image i's noise comes from ``seeds[i]`` alone, so a variant does not depend on which batch
        it was generated in."""
        self.unet.eval()
        conditions = self.class_labels(labels)
        timesteps = self.timesteps()
        cumulative = self.scheduler.alphas_cumprod.to(images.device, torch.float32)
        sample = images.float() * 2 - 1
        noise = torch.stack(
            [torch.randn(sample.shape[1:], generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
        ).to(sample)
        start = cumulative[timesteps[0]]
        sample = start.sqrt() * sample + (1 - start).sqrt() * noise
        for index, timestep in enumerate(timesteps):
            alpha = cumulative[timestep]
            previous = cumulative[timesteps[index + 1]] if index + 1 < len(timesteps) else torch.ones_like(alpha)
            epsilon = self.unet(sample, timestep, class_labels=conditions).sample.float()
            clean = ((sample - (1 - alpha).sqrt() * epsilon) / alpha.sqrt()).clamp(-1, 1)
            epsilon = (sample - alpha.sqrt() * clean) / (1 - alpha).sqrt()  # consistent with the clipped estimate
            sample = previous.sqrt() * clean + (1 - previous).sqrt() * epsilon
        return ((sample + 1) / 2).clamp(0, 1).to(images.dtype)


def sdedit_timesteps(strength: float, steps: int, total: int = 1000) -> list[int]:
    """SDEdit's schedule: start at ``round(strength · total) - 1`` and take ``steps`` evenly spaced timesteps down
    to (not including) t = -1; the last step lands on the clean image. ``steps`` is capped at the start level."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number ≥ 1, got {steps!r}")
    start = max(1, round(strength * total))
    count = min(steps, start)
    return [round(start * (count - k) / count) - 1 for k in range(count)]


class PipelineGenerator:
    """Any local diffusers img2img pipeline folder: ``StableDiffusionImg2ImgPipeline``, or
    ``StableDiffusionInstructPix2PixPipeline`` with a list of prompts as DiffuseMix uses. Grey images are
    repeated to RGB on the way in and averaged back on the way out."""

    kind = "pipeline"

    def __init__(
        self,
        directory: str | Path,
        *,
        prompts: list[str] | None = None,
        strength: float = 0.5,
        steps: int = 20,
        instruct: bool = False,
    ) -> None:
        directory = Path(directory)
        if not (directory / "model_index.json").exists():
            raise _missing(directory, "a diffusers pipeline (model_index.json)")
        import diffusers

        name = "StableDiffusionInstructPix2PixPipeline" if instruct else "StableDiffusionImg2ImgPipeline"
        self.pipeline = getattr(diffusers, name).from_pretrained(directory, local_files_only=True)
        self.prompts = prompts or [""]
        self.strength = strength
        self.steps = steps
        self.instruct = instruct
        self.directory = directory

    @property
    def identity(self) -> str:
        index = (self.directory / "model_index.json").read_bytes()
        return f"{self.kind}-{hashlib.sha256(index + str(self.prompts).encode()).hexdigest()[:12]}"

    def to(self, device: torch.device | str) -> PipelineGenerator:
        self.pipeline.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        grey = images.shape[1] == 1
        generator = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        rgb = images.repeat(1, 3, 1, 1) if grey else images
        prompts = [self.prompts[int(seed) % len(self.prompts)] for seed in seeds]
        settings: dict[str, Any] = {"num_inference_steps": self.steps, "generator": generator, "output_type": "pt"}
        if not self.instruct:
            settings["strength"] = self.strength
        output = self.pipeline(prompt=prompts, image=rgb, **settings).images.to(images)
        output = torch.nn.functional.interpolate(output, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return output.mean(dim=1, keepdim=True) if grey else output


def load_generator(path: str | Path, **settings: Any) -> ClassConditionalGenerator | PipelineGenerator:
    """The generator in ``path``: a meddiffuse UNet folder, or a diffusers pipeline folder."""
    directory = Path(path)
    if (directory / GENERATOR_FILE).exists():
        return ClassConditionalGenerator.from_pretrained(directory, **settings)
    if (directory / "model_index.json").exists():
        return PipelineGenerator(directory, **settings)
    raise _missing(directory, "a generator")
