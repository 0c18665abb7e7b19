"""What every dimension of the 360 card reads first: checked (images, labels), the model's logits, its top-1.

The images are standardised, as :func:`vitsurvey.data.load` returns them; the model may sit on any device
(:func:`vitsurvey.device.device_of`): inputs go to it and results come back to the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import train
from ...data import tensor_loader
from ...device import device_of

__all__ = ["check_images", "logits_of", "top1_of"]


def check_images(images: Tensor, labels: Tensor) -> None:
    """Fail early, naming the mismatch, unless ``images`` is a non-empty (N, C, H, W) batch with one label each."""
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"Expected one label per image: {images.shape[0]} images, labels of shape {tuple(labels.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("No images given: pass at least one image and its label.")


@torch.no_grad()
def logits_of(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The model's logits for every image, in eval mode, in batches, on the model's device; returned on the CPU."""
    model.eval()
    dev = device_of(model)
    return torch.cat([model(images[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)])


def top1_of(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 (%) of the model on ``images``, by :func:`vitsurvey.train.evaluate` on the model's device, in the
    same unshuffled batches as :func:`logits_of` (a multiplexer mixes the same groups of images in both)."""
    return train.evaluate(model, tensor_loader(images, labels, batch_size), device_of(model))
