"""torchvision's ImageNet architectures, adapted to the data set's channels and classes."""

from torch import nn
from torchvision import models as tvm



def _strip_affine(model: nn.Module, affine: bool) -> nn.Module:
    """torchvision initializes BatchNorm's affine weights in its constructor, so swap the layers afterwards."""
    if affine:
        return model
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum, affine=False))
    return model


def _replace_stem(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


def resnet18(input_shape, num_classes, affine_bn=False):
    model = _strip_affine(tvm.resnet18(weights=None, num_classes=num_classes), affine_bn)
    model.conv1 = _replace_stem(model.conv1, input_shape[0])
    return model


def resnet50(input_shape, num_classes, affine_bn=False):
    model = _strip_affine(tvm.resnet50(weights=None, num_classes=num_classes), affine_bn)
    model.conv1 = _replace_stem(model.conv1, input_shape[0])
    return model


def mobilenet_v2(input_shape, num_classes, affine_bn=False):
    model = _strip_affine(tvm.mobilenet_v2(weights=None, num_classes=num_classes), affine_bn)
    model.features[0][0] = _replace_stem(model.features[0][0], input_shape[0])
    return model
