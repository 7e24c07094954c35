"""Training the built-in class-conditional diffusion generator on shards (CPU at 32–64 px, CUDA when present)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .diffusion import ClassConditionalGenerator
from .factory import default_device

__all__ = ["train_generator"]


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
    seed: int = 0,
    num_workers: int = 0,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Denoising (epsilon-prediction) training conditioned on the label; saves with ``save_pretrained``."""
    from ..loader import MedDiffuseLoader

    target = default_device(device)
    loader = MedDiffuseLoader(dataset, batch_size, num_workers=num_workers, seed=seed, drop_last=True,
                              storage_options=storage_options)  # fmt: skip
    if len(loader) == 0:
        raise ValueError(f"{dataset}: fewer training samples than one batch of {batch_size}; lower --batch-size")
    first, _ = next(iter(loader))
    loader.set_epoch(0)
    torch.manual_seed(seed)
    generator = ClassConditionalGenerator.create(first.shape[-1], first.shape[1], len(loader.dataset.class_names),
                                                 width=width, strength=strength, steps=steps).to(target)  # fmt: skip
    optimizer = torch.optim.AdamW(generator.unet.parameters(), lr=learning_rate)
    draws = torch.Generator().manual_seed(seed)
    timesteps = generator.scheduler.config.num_train_timesteps
    losses: list[float] = []
    bar = tqdm(total=epochs * len(loader), desc="train-diffusion", unit="batch", disable=not progress)
    generator.unet.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            images, labels = images.to(target, non_blocking=True), labels.to(target, non_blocking=True)
            noise = torch.randn(images.shape, generator=draws).to(target)
            steps_drawn = torch.randint(0, timesteps, (len(images),), generator=draws).to(target)
            noisy = generator.scheduler.add_noise(images * 2 - 1, noise, steps_drawn)
            loss = F.mse_loss(generator.unet(noisy, steps_drawn, class_labels=labels).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    loader.close()
    generator.forget_identity()  # the weights changed since any identity was taken
    generator.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10) :]
    return {"batches": len(losses), "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}
