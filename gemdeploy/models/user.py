"""Models that are not in the built-in table: a user's factory (file or module), any torchvision classification
model by name, or an nn.Module handed to gemdeploy.api (gemdeploy.user_code names them).

A factory is called like the built-in ones, with the data set's ``input_shape`` (C, H, W) and ``num_classes``
(by keyword when its signature has those names, else positionally, else with no arguments). Its BatchNorm stays as
it defines it (affine or not): exact compaction only removes channels it can prove carry zeros or are never read.
torchvision models are built without weights (``weights=None``: nothing is downloaded), with ``num_classes``
classes, and their first convolution takes the data set's channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from gemdeploy import user_code
from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.masks import PRUNABLE_TYPES

# torchvision models that need an argument to build without their pre-trained weights' auxiliary heads.
_TORCHVISION_EXTRA = {"googlenet": {"aux_logits": False, "init_weights": True},
                      "inception_v3": {"aux_logits": False, "init_weights": True}}


def torchvision_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    from torchvision import models as tvm

    names = tvm.list_models(module=tvm)  # the classification models (detection, video, ... live in submodules)
    if name not in names:
        raise GemdeployError(f"unknown torchvision classification model {name!r}; e.g. resnet18, mobilenet_v3_small, "
                             f"efficientnet_b0, convnext_tiny ({len(names)} in all: "
                             "torchvision.models.list_models(module=torchvision.models))")
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **_TORCHVISION_EXTRA.get(name, {}))
    except Exception as exc:  # noqa: BLE001 - torchvision raises several types
        raise GemdeployError(f"torchvision cannot build {name} with {num_classes} classes: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    if hasattr(model, "transform_input"):
        model.transform_input = False  # an ImageNet-statistics shuffle that assumes 3 channels
    _adapt_stem(model, input_shape[0])
    return model


def _adapt_stem(model: nn.Module, channels: int) -> None:
    """Give the first convolution ``channels`` input channels (a fresh layer, like the built-in models do)."""
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.in_channels == channels:
            return
        if conv.groups != 1:
            raise GemdeployError(f"cannot adapt the grouped first convolution {name} to {channels} input channels")
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Conv2d(
            channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None, padding_mode=conv.padding_mode))
        return


def build_user_model(value: str, input_shape: tuple[int, int, int], num_classes: int,
                     sha256: str | None = None) -> nn.Module:
    spec = user_code.parse(value)
    if spec is None:
        raise ValueError(f"not a model spec: {value!r}")
    shape = tuple(int(v) for v in input_shape)
    if spec.kind == "torchvision":
        return torchvision_model(spec.target, shape, num_classes)
    factory = user_code.live_object(spec, "model") if spec.kind == "python" else user_code.load(value, "model", sha256)
    if isinstance(factory, nn.Module):
        raise GemdeployError(f"{value} is a model instance; --model needs a factory (a function or class that "
                             "returns a new nn.Module), or pass the instance to gemdeploy.api.mine")
    if not callable(factory):
        raise GemdeployError(f"{value} is a {type(factory).__name__}, not a function or class that builds a model")
    model = user_code.call_factory(factory, value, "model", input_shape=shape, num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise GemdeployError(f"the model factory {value} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@torch.no_grad()
def check_model(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, name: str) -> None:
    """Refuse, in one line, a model gemdeploy cannot mine: nothing to prune, a forward pass that fails on the data
    set's input shape, or logits of the wrong shape."""
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()):
        raise GemdeployError(f"model {name} has no Conv2d or Linear layer: there is nothing to prune")
    params = list(model.parameters()) + list(model.buffers())
    device = params[0].device if params else torch.device("cpu")
    x = torch.zeros(2, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        y = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything
        text = str(exc).strip().splitlines()
        raise GemdeployError(f"model {name} fails on a batch of shape {tuple(x.shape)} (the data set's input): "
                             f"{type(exc).__name__}: {text[0] if text else ''}") from None
    finally:
        model.train(was_training)
    if not isinstance(y, torch.Tensor):
        raise GemdeployError(f"model {name} returns a {type(y).__name__}; gemdeploy needs one logits tensor "
                             f"of shape (batch, {num_classes})")
    if tuple(y.shape) != (2, num_classes):
        raise GemdeployError(f"model {name} returns shape {tuple(y.shape)} for input {tuple(x.shape)}; the data set "
                             f"has {num_classes} classes, so it must return (batch, {num_classes}) logits")
