"""ResNets with torchvision's layer names (`conv1`, `layer1.0.conv1`,
`layer2.0.downsample.0`, `fc`), so masks from the original code line up.

Two families:
- `ResNet` with 4 stages (ResNet-18/34 basic blocks, ResNet-50 bottlenecks), a
  3x3 stride-1 stem without max-pool for small images (CIFAR, digits) or the
  ImageNet 7x7 stride-2 stem with max-pool;
- `CifarResNet` with 3 stages of 16/32/64 channels times `width`
  (ResNet-20/56, and WRN-32-2 = ResNet-32 at width 2).
"""
from torch import nn

from models.normalize import Normalize


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); declares its
    residual sum and its conv1 -> bn1 -> conv2 chain (models.structure)."""
    expansion = 1
    residual_depth = 2

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def conv_chains(self):
        return [(self, "conv1", "bn1", "conv2")]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 branch plus shortcut; declares its residual sum and
    its two chains (models.structure)."""
    expansion = 4
    residual_depth = 3

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # torchvision (v1.5) puts the stride on the 3x3 convolution.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def conv_chains(self):
        return [(self, "conv1", "bn1", "conv2"), (self, "conv2", "bn2", "conv3")]


def _shortcut(in_planes, out_planes, stride):
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


def _init_weights(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _StagedNet(nn.Module):
    """Shared stem -> stages -> pool -> fc skeleton."""

    def _make_stage(self, block, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.maxpool(x)
        for stage in self.stages():
            x = stage(x)
        return self.fc(self.avgpool(x).flatten(1))


class ResNet(_StagedNet):
    def __init__(self, block, layers, num_classes, in_channels, mean, std, imagenet_stem):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.in_planes = 64
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(block, 64, layers[0], 1)
        self.layer2 = self._make_stage(block, 128, layers[1], 2)
        self.layer3 = self._make_stage(block, 256, layers[2], 2)
        self.layer4 = self._make_stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self)

    def stages(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]


class CifarResNet(_StagedNet):
    def __init__(self, depth, width, num_classes, in_channels, mean, std):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.in_planes = 16 * width
        self.conv1 = nn.Conv2d(in_channels, self.in_planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_stage(BasicBlock, 16 * width, blocks, 1)
        self.layer2 = self._make_stage(BasicBlock, 32 * width, blocks, 2)
        self.layer3 = self._make_stage(BasicBlock, 64 * width, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * width, num_classes)
        _init_weights(self)

    def stages(self):
        return [self.layer1, self.layer2, self.layer3]


def resnet18(num_classes, in_channels, mean, std, imagenet_stem):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, mean, std, imagenet_stem)


def resnet34(num_classes, in_channels, mean, std, imagenet_stem):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, mean, std, imagenet_stem)


def resnet50(num_classes, in_channels, mean, std, imagenet_stem):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, mean, std, imagenet_stem)


def resnet20s(num_classes, in_channels, mean, std, imagenet_stem):
    return CifarResNet(20, 1, num_classes, in_channels, mean, std)


def resnet56s(num_classes, in_channels, mean, std, imagenet_stem):
    return CifarResNet(56, 1, num_classes, in_channels, mean, std)


def wrn32_2(num_classes, in_channels, mean, std, imagenet_stem):
    return CifarResNet(32, 2, num_classes, in_channels, mean, std)
