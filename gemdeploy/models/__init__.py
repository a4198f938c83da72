"""Model registry: every factory takes the data set's input shape (C, H, W), its class count and
whether BatchNorm has learnable affine parameters (Gem-Miner mines with non-affine BatchNorm)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from gemdeploy.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, affine_bn: bool = False) -> nn.Module:
    factory = MODELS.get(name)
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, affine_bn=affine_bn)


# Importing the modules registers their models.
from gemdeploy.models import small, resnet_cifar, vgg, mobilenet, imagenet  # noqa: E402,F401
