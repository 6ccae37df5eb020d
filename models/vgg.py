"""VGG-16 with batch norm for small images: 13 convs in `features`, one
linear classifier on the 512-d pooled feature (14.7M parameters at 10
classes, the paper's count).

Max-pools use ceil_mode so that 8x8 inputs (digits) survive all five pools.
"""
from torch import nn

from models.normalize import Normalize

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg, num_classes, in_channels, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, channels = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def conv_chains(self):
        """Each conv of `features` feeds the next through its BN, ReLU (and max-pool)."""
        items = list(self.features.named_children())
        convs = [i for i, (_, m) in enumerate(items) if isinstance(m, nn.Conv2d)]
        return [(self.features, items[a][0], items[a + 1][0], items[b][0]) for a, b in zip(convs, convs[1:])]

    def forward(self, x):
        x = self.features(self.normalize(x))
        return self.classifier(self.avgpool(x).flatten(1))


def vgg16_bn(num_classes, in_channels, mean, std, imagenet_stem):
    return VGG(VGG16_CFG, num_classes, in_channels, mean, std)
