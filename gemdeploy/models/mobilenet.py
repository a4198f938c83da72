"""MobileNet-V2, CIFAR variant (stride 1 stem and first stages, as in the Gem-Miner experiments)."""

from torch import nn

from gemdeploy.models.layers import batch_norm, conv_bn_relu

# (expansion, out_channels, repeats, stride)
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int, affine: bool):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else conv_bn_relu(cin, hidden, affine, kernel=1)
        layers += conv_bn_relu(hidden, hidden, affine, stride=stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), batch_norm(cout, affine)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


def mobilenetv2(input_shape, num_classes, affine_bn=False):
    layers, cin = conv_bn_relu(input_shape[0], 32, affine_bn), 32
    for expansion, cout, repeats, stride in CIFAR_CFG:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1, affine_bn))
            cin = cout
    layers += conv_bn_relu(cin, 1280, affine_bn, kernel=1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))
