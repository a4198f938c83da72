"""Building blocks shared by the model definitions."""

from torch import nn


def batch_norm(channels: int, affine: bool) -> nn.BatchNorm2d:
    # Non-affine BatchNorm (the Gem-Miner setting) maps an all-zero channel to exactly zero in eval,
    # which is what makes removing dead channels lossless.
    return nn.BatchNorm2d(channels, affine=affine)


def linear_bn_relu(fin: int, fout: int, affine: bool) -> list[nn.Module]:
    # Without normalization an MLP pruned to ~1% density passes almost no signal at initialization;
    # non-affine BatchNorm rescales it and still maps a dead unit to exactly zero.
    return [nn.Linear(fin, fout, bias=False), nn.BatchNorm1d(fout, affine=affine), nn.ReLU(inplace=True)]


def conv_bn_relu(cin: int, cout: int, affine: bool, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        batch_norm(cout, affine),
        nn.ReLU(inplace=True),
    ]
