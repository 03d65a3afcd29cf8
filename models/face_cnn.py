"""A small VGG-style CNN for 48x48 grayscale faces; its pooled vector is FARCER's face feature."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn as nn

from backend.errors import InputError


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


def face_to_gray(image: np.ndarray, size: int = 48) -> np.ndarray:
    """An RGB (or grayscale) uint8 face crop of any size -> [size, size] uint8 grayscale."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise InputError("face crop is empty or not an image array; pass an HxWx3 RGB uint8 crop")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim != 2:
        raise InputError(f"face crop has shape {image.shape}; expected HxWx3 RGB or HxW grayscale")
    if image.dtype != np.uint8:
        raise InputError(f"face crop has dtype {image.dtype}; expected uint8 pixels (0-255)")
    if image.shape != (size, size):
        shrinking = min(image.shape) >= size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image


def to_pixels(gray: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W] -> float [B, 1, H, W] on the 0-1 scale."""
    return gray.float().div(255.0).unsqueeze(1)


def normalise(pixels: torch.Tensor, config: FaceCNNConfig) -> torch.Tensor:
    """0-1 pixels -> the model's input scale (the training pixel statistics)."""
    return (pixels - config.mean) / config.std


def preprocess(crops_rgb: list[np.ndarray], config: FaceCNNConfig | None = None) -> torch.Tensor:
    """Face crops (RGB uint8, any size, e.g. from OpenCV) -> the model's [B, 1, 48, 48] input."""
    config = config or FaceCNNConfig()
    if len(crops_rgb) == 0:
        raise InputError("no face crops to preprocess; pass at least one HxWx3 RGB uint8 crop")
    gray = np.stack([face_to_gray(crop, config.image_size) for crop in crops_rgb])
    return normalise(to_pixels(torch.from_numpy(gray)), config)
