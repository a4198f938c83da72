"""CIFAR ResNets (He et al., 2016): three stages of 16/32/64 channels, 1x1 projection shortcuts."""

from torch import nn

from gemdeploy.models.layers import batch_norm


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, affine: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(cout, affine)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = batch_norm(cout, affine)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), batch_norm(cout, affine))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, affine: bool):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = batch_norm(16, affine)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1, affine))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet20(input_shape, num_classes, affine_bn=False):
    return CifarResNet(20, input_shape[0], num_classes, affine_bn)


def resnet32(input_shape, num_classes, affine_bn=False):
    return CifarResNet(32, input_shape[0], num_classes, affine_bn)


def resnet56(input_shape, num_classes, affine_bn=False):
    return CifarResNet(56, input_shape[0], num_classes, affine_bn)
