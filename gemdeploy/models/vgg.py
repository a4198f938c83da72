"""VGG-16 with BatchNorm for CIFAR-sized inputs."""

from torch import nn

from gemdeploy.models.layers import conv_bn_relu

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(input_shape, num_classes, affine_bn=False):
    layers, cin = [], input_shape[0]
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil_mode: 28x28 digits pool down to 1x1, not 0x0
        else:
            layers += conv_bn_relu(cin, v, affine_bn)
            cin = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
