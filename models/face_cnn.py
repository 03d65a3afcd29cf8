"""A small VGG-style CNN for 48x48 grayscale faces; its pooled vector is FARCER's face feature.

Crops become its input in backend.face_encoder (preprocess)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class FaceCNNConfig:
    n_classes: int = 7
    image_size: int = 48
    channels: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_block: tuple[int, ...] = (1, 2, 2, 2)
    dropout: float = 0.3
    # Pixel statistics of FER2013 train (0-1 scale); preprocessing and training share them.
    mean: float = 0.508
    std: float = 0.255

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.convs_per_block = tuple(self.convs_per_block)
        if len(self.channels) != len(self.convs_per_block):
            raise ValueError("channels and convs_per_block need one entry per block")

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FaceCNN(nn.Module):
    """Blocks of 3x3 conv-BN-ReLU, each followed by 2x2 max-pooling, then global average pooling."""

    def __init__(self, config: FaceCNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for c_out, n_convs in zip(config.channels, config.convs_per_block):
            for i in range(n_convs):
                layers += _conv_bn(c_in if i == 0 else c_out, c_out)
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] normalised faces -> [B, feature_dim] pooled vectors."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
