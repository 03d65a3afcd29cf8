"""Face features for FARCER: face crops -> the vectors its image slots hold.

The offline face encoder is a `models.face_cnn.FaceCNN` checkpoint (model "face-encoder"); its input
is a 48x48 grayscale crop normalised with the training pixel statistics. The paper profile's is a
Hugging Face ViT (the CLS token of its last hidden state).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from backend.checkpoints import Checkpoint
from backend.errors import InputError, ModelUnavailableError
from backend.hub import from_pretrained
from backend.hub_components import check_hub_component, load_kwargs
from backend.model_store import ModelStore
from models.face_cnn import FaceCNN, FaceCNNConfig

MODEL = "face-encoder"
WEIGHTS = "model.safetensors"
FaceFeatures = Callable[[list[np.ndarray]], np.ndarray]  # RGB uint8 crops -> [N, feature_dim]


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


def to_pixels(gray: Tensor) -> Tensor:
    """uint8 [B, H, W] -> float [B, 1, H, W] on the 0-1 scale."""
    return gray.float().div(255.0).unsqueeze(1)


def normalise(pixels: Tensor, config: FaceCNNConfig) -> Tensor:
    """0-1 pixels -> the model's input scale (the training pixel statistics)."""
    return (pixels - config.mean) / config.std


def preprocess(crops_rgb: list[np.ndarray], config: FaceCNNConfig | None = None) -> Tensor:
    """Face crops (RGB uint8, any size, e.g. from OpenCV) -> the model's [B, 1, 48, 48] input."""
    config = config or FaceCNNConfig()
    if len(crops_rgb) == 0:
        raise InputError("no face crops to preprocess; pass at least one HxWx3 RGB uint8 crop")
    gray = np.stack([face_to_gray(crop, config.image_size) for crop in crops_rgb])
    return normalise(to_pixels(torch.from_numpy(gray)), config)


def model_config(checkpoint: Checkpoint) -> FaceCNNConfig:
    """The FaceCNNConfig of a face-encoder checkpoint."""
    if checkpoint.model != MODEL:
        raise ModelUnavailableError(
            f"{checkpoint.path} is a {checkpoint.model} checkpoint, not a {MODEL} one"
        )
    return FaceCNNConfig(**checkpoint.config)


def build_model(checkpoint: Checkpoint, store: ModelStore, device: str) -> FaceCNN:
    """The face encoder of a face-encoder checkpoint, weights loaded, in eval mode (it has no
    components, so `store` is not read)."""
    model = FaceCNN(model_config(checkpoint))
    model.load_state_dict(load_file(checkpoint.file(WEIGHTS)))
    return model.to(device).eval()


def crop_features(checkpoint: Checkpoint, store: ModelStore, device: str) -> FaceFeatures:
    """RGB crops -> the pooled feature vectors of a face-encoder checkpoint."""
    model = build_model(checkpoint, store, device)

    def features(crops: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model.features(preprocess(crops, model.config).to(device)).cpu().numpy()

    return features


@dataclass
class ViTFaceEncoder:
    """A ViT face model; a face's feature is the CLS token of the last hidden state."""

    model: nn.Module
    processor: Any

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> Tensor:
        """[N, hidden] features of RGB images (arrays HxWx3 or PIL images)."""
        device = next(self.model.parameters()).device
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float()


def load_vit(name: str, device: str, revision: str | None = None) -> ViTFaceEncoder:
    """A hub (or local) ViT face model, frozen; ModelUnavailableError when it is not on this machine."""
    from transformers import ViTImageProcessorPil, ViTModel

    pin = {"revision": revision} if revision else {}
    vit = from_pretrained(ViTModel.from_pretrained, name, "face encoder", add_pooling_layer=False, **pin)
    processor = from_pretrained(ViTImageProcessorPil.from_pretrained, name, "face image processor", **pin)
    return ViTFaceEncoder(vit.to(device).eval().requires_grad_(False), processor)


def vit_feature_dim(name: str) -> int:
    """The size of a hub (or local) ViT's CLS vector (its hidden size: 768 for vit-face-expression)."""
    from transformers import ViTConfig

    return from_pretrained(ViTConfig.from_pretrained, name, "face encoder").hidden_size


def component_features(owner: Checkpoint, name: str, store: ModelStore, device: str) -> FaceFeatures:
    """The face features of `owner`'s component `name`: a face-encoder checkpoint or a hub ViT."""
    component = owner.components.get(name) or {}
    if component.get("kind") == "hub":
        check_hub_component(owner, name)
        vit = load_vit(component["name"], device, load_kwargs(component).get("revision"))
        return lambda crops: vit(crops).cpu().numpy()
    return crop_features(store.component(owner, name), store, device)
