"""Training the built-in class-conditional diffusion generator on shards (CPU at 32–64 px, CUDA when present).

Three choices make a small UNet useful after minutes on a CPU rather than hours:

- it learns only the noise levels SDEdit will use (timesteps below ``strength`` of the schedule): generation
  never starts from pure noise, so capacity spent there is wasted;
- it trains on random ``crop``-pixel crops (the UNet is fully convolutional, so it generates at full size): a
  quarter of the pixels per sample at ``crop = size / 2``, so four times the steps for the same time;
- the saved weights are an exponential moving average (``ema``) of the trained ones, which denoise far better
  than the last step's after short training; the average warms up (decay ``min(ema, (1 + n) / (10 + n))`` after n
  steps), so a short run's average is not held back by the random initial weights (at 0.995 from step 0, 344
  steps left 18 % of the average on them: blotchy variants).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..augment.diffusion import ClassConditionalGenerator
from .stage_factory import default_device

__all__ = ["ema_decay", "random_crops", "train_generator"]


def ema_decay(ema: float, step: int) -> float:
    """The moving average's decay after ``step`` optimizer steps: warmed up, at most ``ema``."""
    return min(ema, (1 + step) / (10 + step))


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size``×``size`` crop per image (positions drawn from ``generator``)."""
    height, width = images.shape[-2:]
    if size >= min(height, width):
        return images
    tops = torch.randint(0, height - size + 1, (len(images),), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (len(images),), generator=generator).tolist()
    return torch.stack([image[:, t : t + size, x : x + size] for image, t, x in zip(images, tops, lefts, strict=True)])


def train_generator(
    dataset: str,
    out: str | Path,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    width: int = 32,
    strength: float = 0.5,
    steps: int = 10,
    crop: int | None = None,
    ema: float = 0.995,
    seed: int = 0,
    num_workers: int = 0,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Denoising (epsilon-prediction) training conditioned on the label; saves the EMA weights with
    ``save_pretrained``. ``crop`` must be a multiple of 2 (the UNet halves the resolution once). On a multi-label
    dataset a finding vector is no class: the generator gets one shared class (its variants are conditioned on no
    finding; MedDiffuseMix keeps every finding's evidence from the original)."""
    from ..loader import MedDiffuseLoader

    if crop is not None and (crop < 8 or crop % 2):
        raise ValueError(f"--crop must be an even number of pixels ≥ 8, got {crop}")
    if not 0 <= ema < 1:
        raise ValueError(f"--ema must be in [0, 1), got {ema}")
    target = default_device(device)
    loader = MedDiffuseLoader(
        dataset, batch_size, num_workers=num_workers, seed=seed, drop_last=True, storage_options=storage_options
    )
    if len(loader) == 0:
        raise ValueError(f"{dataset}: fewer training samples than one batch of {batch_size}; lower --batch-size")
    first = next(iter(loader))[0]
    loader.set_epoch(0)
    torch.manual_seed(seed)
    multi_label = loader.labels.kind == "findings"
    classes = 1 if multi_label else len(loader.dataset.class_names)
    generator = ClassConditionalGenerator.create(
        first.shape[-1], first.shape[1], classes, width=width, strength=strength, steps=steps
    ).to(target)
    average = {k: v.detach().clone() for k, v in generator.unet.state_dict().items()}
    optimizer = torch.optim.AdamW(generator.unet.parameters(), lr=learning_rate)
    draws = torch.Generator().manual_seed(seed)
    timesteps = generator.scheduler.config.num_train_timesteps
    highest = max(1, int(strength * timesteps))  # SDEdit starts below this: only these levels are ever denoised
    losses: list[float] = []
    bar = tqdm(total=epochs * len(loader), desc="train-diffusion", unit="batch", disable=not progress)
    generator.unet.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            images, labels = batch[0], batch[1]
            if multi_label:
                labels = torch.zeros(len(images), dtype=torch.long)
            if crop is not None:
                images = random_crops(images, crop, draws)
            images, labels = images.to(target, non_blocking=True), labels.to(target, non_blocking=True)
            noise = torch.randn(images.shape, generator=draws).to(target)
            steps_drawn = torch.randint(0, highest, (len(images),), generator=draws).to(target)
            noisy = generator.scheduler.add_noise(images * 2 - 1, noise, steps_drawn)
            loss = F.mse_loss(generator.unet(noisy, steps_drawn, class_labels=labels).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                decay = ema_decay(ema, len(losses))
                for name, value in generator.unet.state_dict().items():
                    if value.is_floating_point():
                        average[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
                    else:
                        average[name].copy_(value)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    loader.close()
    if ema > 0:
        generator.unet.load_state_dict(average)
    generator.forget_identity()  # the weights changed since any identity was taken
    generator.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10) :]
    return {"batches": len(losses), "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}
