"""MobileNet-v1 for small images: a 3x3 stride-1 stem, 13 depthwise-separable
blocks (`layers.i.conv1` depthwise 3x3, `layers.i.conv2` pointwise 1x1) and
a linear classifier (3.2M parameters at 10 classes).
"""
from torch import nn

from models.normalize import Normalize

# (output channels, stride) of each depthwise-separable block.
MOBILENET_V1_CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))

    def conv_chains(self):
        return [(self, "conv1", "bn1", "conv2")]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes, in_channels, mean, std, imagenet_stem):
        super().__init__()
        self.normalize = Normalize(mean, std)
        stem_stride = 2 if imagenet_stem else 1
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        blocks, channels = [], 32
        for out_planes, stride in MOBILENET_V1_CFG:
            blocks.append(DepthwiseSeparable(channels, out_planes, stride))
            channels = out_planes
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        return self.fc(self.avgpool(x).flatten(1))
