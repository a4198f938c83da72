"""Architectures by name (the `--model` choices). Every factory takes the data set's input shape (C, H, W),
its class count and whether BatchNorm has learnable affine parameters (Gem-Miner mines with non-affine
BatchNorm, so a dead channel outputs exactly zero). A user's own model (a factory in a file or module, a
torchvision name, an nn.Module given to gemdeploy.api) is built by gemdeploy.models.user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from gemdeploy.registry import Registry

if TYPE_CHECKING:
    from torch import nn

ModelFactory = Callable[..., "nn.Module"]
_M = "gemdeploy.models"
MODELS: Registry[ModelFactory] = Registry("model", {
    "lenet300": (f"{_M}.small:lenet300", "LeNet-300-100 (MLP), non-affine BatchNorm after each hidden layer"),
    "conv4": (f"{_M}.small:conv4", "Conv-4 (Frankle & Carbin): 4 convs + 3 linear layers"),
    "resnet20": (f"{_M}.resnet_cifar:resnet20", "CIFAR ResNet-20 (0.27M parameters)"),
    "resnet32": (f"{_M}.resnet_cifar:resnet32", "CIFAR ResNet-32"),
    "resnet56": (f"{_M}.resnet_cifar:resnet56", "CIFAR ResNet-56"),
    "vgg16": (f"{_M}.vgg:vgg16", "VGG-16 for CIFAR-sized input (14.7M parameters)"),
    "mobilenetv2": (f"{_M}.mobilenet:mobilenetv2", "MobileNetV2 for CIFAR-sized input (depthwise convs)"),
    "resnet18": (f"{_M}.imagenet:resnet18", "torchvision ResNet-18 (ImageNet-sized input)"),
    "resnet50": (f"{_M}.imagenet:resnet50", "torchvision ResNet-50 (ImageNet-sized input)"),
    "mobilenet_v2": (f"{_M}.imagenet:mobilenet_v2", "torchvision MobileNetV2 (ImageNet-sized input)"),
})


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, affine_bn: bool = False, *,
                sha256: str | None = None) -> "nn.Module":
    """A fresh network: a built-in name, or a spec (``file.py:factory``, ``package.module:factory``,
    ``torchvision:name``, ``python:NAME`` from gemdeploy.api; see gemdeploy.user_code) whose defining file is
    checked against ``sha256`` when a run recorded one. ``affine_bn`` applies to the built-in models only: a user's
    model keeps its BatchNorm as it defines it."""
    from gemdeploy.user_code import is_spec  # the table above is read by --help: implementations load when used

    if is_spec(name):
        from gemdeploy.models.user import build_user_model

        return build_user_model(name, tuple(input_shape), num_classes, sha256)
    factory = MODELS.get(name)
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, affine_bn=affine_bn)


def model_for(config, input_shape: tuple[int, int, int], num_classes: int) -> "nn.Module":
    """The network of a run configuration (a MineConfig): its model, its recorded source file checked."""
    return build_model(config.model, input_shape, num_classes, sha256=getattr(config, "model_sha256", None))


def load_weights(model: "nn.Module", state: dict) -> None:
    """``model.load_state_dict(state)`` for a state read from safetensors, which keeps no per-module version
    metadata: the state was saved from this very architecture, so its own versions are attached (torchvision's
    MNASNet refuses a state without them)."""
    if getattr(state, "_metadata", None) is None:
        from collections import OrderedDict

        state = OrderedDict(state)
        state._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    model.load_state_dict(state)


def fp32_bytes(tensors: Iterable) -> int:
    """The bytes ``tensors`` (a state dict's values) take in fp32, integer buffers left out: what one ONNX file and
    each of mining's copies of the weights hold."""
    return sum(4 * t.numel() for t in tensors if t.is_floating_point())
