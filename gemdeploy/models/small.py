"""LeNet-300-100 and Conv-4 (Frankle & Carbin, 2019), with non-affine BatchNorm after each hidden layer."""

from math import prod

from torch import nn

from gemdeploy.models.layers import conv_bn_relu, linear_bn_relu


def lenet300(input_shape, num_classes, affine_bn=False):
    # Hidden layers carry no bias, so a unit whose incoming weights are all pruned outputs exactly zero.
    return nn.Sequential(
        nn.Flatten(),
        *linear_bn_relu(prod(input_shape), 300, affine_bn),
        *linear_bn_relu(300, 100, affine_bn),
        nn.Linear(100, num_classes),
    )


def conv4(input_shape, num_classes, affine_bn=False):
    c, h, w = input_shape
    # ceil_mode keeps tiny inputs (8x8 digits) from pooling down to nothing.
    features = nn.Sequential(
        *conv_bn_relu(c, 64, affine_bn),
        *conv_bn_relu(64, 64, affine_bn),
        nn.MaxPool2d(2, ceil_mode=True),
        *conv_bn_relu(64, 128, affine_bn),
        *conv_bn_relu(128, 128, affine_bn),
        nn.MaxPool2d(2, ceil_mode=True),
    )
    fh, fw = -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2)
    return nn.Sequential(
        features,
        nn.Flatten(),
        *linear_bn_relu(128 * fh * fw, 256, affine_bn),
        *linear_bn_relu(256, 256, affine_bn),
        nn.Linear(256, num_classes),
    )
