"""Classifiers written here (no timm, no torchvision): a small CNN, ResNet-18 and ViT-tiny.

Each model names the layers saliency methods attribute to (``saliency_layers``, coarsest first; ``saliency_layer`` is
the first of them): the convolutional stages of the CNNs, and for the ViT the patch tokens entering its last block,
laid out on the patch grid with the CLS token dropped — the tokens the CLS token attends to last.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["MODELS", "ResNet18", "SmallCNN", "SmallCNN16", "TokenGrid", "ViTTiny", "build_model", "load_weights"]


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: fast enough to train on a laptop CPU at 32–64 px. Average pooling
    between blocks (max pooling costs three times as much on CPU builds of torch); global *max* pooling at the end,
    which asks whether a finding is anywhere in the image — small lesions vanish in a global average."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, out in enumerate((width, width * 2, width * 4, width * 4)):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if index < 3:
                layers.append(nn.AvgPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    @property
    def saliency_layer(self) -> nn.Module:
        return self.features[-1]

    @property
    def saliency_layers(self) -> list[nn.Module]:
        """The ReLU of each block, coarsest first (at 64 px: 8×8, 16×16, 32×32, 64×64)."""
        return [module for module in self.features if isinstance(module, nn.ReLU)][::-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).amax(dim=(2, 3)))


class _Basic(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with a 3x3 stem (no max-pool), as usual for small medical images."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, channels = [], 64
        for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(_Basic(channels, out, stride), _Basic(out, out, 1)))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(512, num_classes)

    @property
    def saliency_layer(self) -> nn.Module:
        return self.stages[-1]

    @property
    def saliency_layers(self) -> list[nn.Module]:
        """The output of each stage, coarsest first."""
        return list(self.stages)[::-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(images)).mean(dim=(2, 3)))


class TokenGrid(nn.Module):
    """Patch tokens ``(B, N, D)`` as a map ``(B, D, h, w)``: what saliency layers see for a ViT."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _count, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, dim, self.grid, self.grid)


class ViTTiny(nn.Module):
    """A ViT with a CLS token; ``image_size`` must be a multiple of ``patch``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        image_size: int = 64,
        patch: int = 8,
        dim: int = 96,
        depth: int = 4,
        heads: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT image_size {image_size} is not a multiple of the patch size {patch}")
        grid = image_size // patch
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        make = lambda: nn.TransformerEncoderLayer(dim, heads, dim * 4, 0.0, batch_first=True, norm_first=True)  # noqa: E731
        self.blocks = nn.ModuleList(make() for _ in range(depth))
        self.grid = TokenGrid(grid)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def saliency_layer(self) -> nn.Module:
        return self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(images), -1, -1), patches], dim=1) + self.position
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        grid = self.grid(tokens[:, 1:])  # in the forward path, so attributions to it are real
        tokens = torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        tokens = self.blocks[-1](tokens)
        return self.head(self.norm(tokens[:, 0]))


class SmallCNN16(SmallCNN):
    """:class:`SmallCNN` at half width (16 base channels): about a third of the compute, for quick CPU runs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__(in_channels, num_classes, width=16)


MODELS = {"cnn": SmallCNN, "cnn-small": SmallCNN16, "resnet18": ResNet18, "vit-tiny": ViTTiny}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A fresh model by CLI name; the ViT needs the image size for its position table."""
    if name not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {name!r}")
    if name == "vit-tiny":
        return ViTTiny(in_channels, num_classes, image_size)
    return MODELS[name](in_channels, num_classes)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint safely: ``.safetensors``, or a torch file read with ``weights_only=True`` (a dict with a
    ``"model"`` entry, as training writes, or a bare state dict). Never unpickles arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found: train a classifier first or pass the right path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    model.load_state_dict(state)
    return model
