"""Classifiers written here (no timm, no torchvision): a small CNN, ResNet-18 and ViT-tiny.

Each model names the layers saliency methods attribute to (``saliency_layers``, coarsest first; ``saliency_layer`` is
the first of them): the convolutional stages of the CNNs, and for the ViT the patch tokens entering its last two
blocks, laid out on the patch grid with the CLS token dropped; the ViT also gives attention rollout. ``embed`` gives
the penultimate features (what the head sees), for feature distances between real and generated images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = [
    "MODELS",
    "Attention",
    "Block",
    "ResNet18",
    "SmallCNN",
    "SmallCNN16",
    "TokenGrid",
    "ViTTiny",
    "build_model",
    "load_weights",
]


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
        layers: list[nn.Module] = [module for module in self.features if isinstance(module, nn.ReLU)]
        return layers[::-1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(B, D)``: what the head sees (for feature distances)."""
        return self.features(images).amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


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

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))


class TokenGrid(nn.Module):
    """Patch tokens ``(B, N, D)`` as a map ``(B, D, h, w)``: what saliency layers see for a ViT."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _count, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, dim, self.grid, self.grid)


class Attention(nn.Module):
    """Multi-head self-attention written out, so its weights can be read (attention rollout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.last: torch.Tensor | None = None  # (B, heads, N, N) of the last call, when ``keep`` is set
        self.keep = False

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, dim = tokens.shape
        q, k, v = self.qkv(tokens).view(batch, count, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5, dim=-1)
        self.last = weights.detach() if self.keep else None
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, count, dim))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a GELU MLP of 4x the width, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class ViTTiny(nn.Module):
    """A ViT with a CLS token, written here; ``image_size`` must be a multiple of ``patch``.

    Saliency: GradCAM on the patch tokens entering the last two blocks (``saliency_layers``, laid on the patch
    grid), or attention rollout (:meth:`attention_rollout`: Abnar & Zuidema, 2020)."""

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
        if depth < 2:
            raise ValueError(f"ViT depth must be at least 2 (GradCAM reads the last two blocks' inputs), got {depth}")
        grid = image_size // patch
        self.patchify = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.grids = nn.ModuleList([TokenGrid(grid), TokenGrid(grid)])  # inputs of the last block, the one before
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def saliency_layer(self) -> nn.Module:
        return self.grids[0]

    @property
    def saliency_layers(self) -> list[nn.Module]:
        """The patch tokens entering the last block, then those entering the block before (both on the grid)."""
        return list(self.grids)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(images), -1, -1), patches], dim=1) + self.position
        depth = len(self.blocks)
        for index, block in enumerate(self.blocks):
            if index >= depth - 2:  # in the forward path, so attributions to the grids are real
                grid = self.grids[depth - 1 - index](tokens[:, 1:])
                tokens = torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
            tokens = block(tokens)
        return tokens

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token ``(B, dim)``: the penultimate features."""
        return self.norm(self._tokens(images)[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))

    def _blocks(self) -> list[Block]:
        return [block for block in self.blocks if isinstance(block, Block)]

    @torch.no_grad()
    def attention_rollout(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)``: how much the CLS token draws on each patch through all blocks — each block's
        head-averaged attention with the residual as identity (0.5 A + 0.5 I, rows renormalised), multiplied."""
        blocks = self._blocks()
        for block in blocks:
            block.attention.keep = True
        try:
            self._tokens(images)
            flows = [block.attention.last for block in blocks]
        finally:
            for block in blocks:
                block.attention.keep = False
                block.attention.last = None
        rollout: torch.Tensor | None = None
        for weights in flows:
            assert weights is not None
            count = int(weights.shape[-1])
            mixed = 0.5 * weights.mean(dim=1) + 0.5 * torch.eye(count, device=images.device)
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
            rollout = mixed if rollout is None else mixed @ rollout
        assert rollout is not None
        side = round((rollout.shape[-1] - 1) ** 0.5)
        return rollout[:, 0, 1:].reshape(len(images), 1, side, side)


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
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    model.load_state_dict(state)
    return model
