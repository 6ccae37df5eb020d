"""Model registry: architecture name -> constructor.

Every constructor takes (num_classes, in_channels, mean, std, imagenet_stem)
and returns a model whose first module is `normalize`.
"""
from models.mobilenet import MobileNetV1
from models.resnet import resnet18, resnet20s, resnet50, resnet56s, wrn32_2
from models.vgg import vgg16_bn

MODELS = {
    "res18": resnet18,
    "res20s": resnet20s,
    "res56s": resnet56s,
    "res50": resnet50,
    "vgg16_bn": vgg16_bn,
    "wrn32": wrn32_2,
    "mobilenet": MobileNetV1,
}


def model_names():
    return sorted(MODELS)


def build_model(arch, num_classes, in_channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), imagenet_stem=False):
    """Build `arch`; unknown names raise ValueError listing the valid ones."""
    if arch not in MODELS:
        raise ValueError(f"unknown architecture '{arch}'; valid: {', '.join(model_names())}")
    return MODELS[arch](num_classes, in_channels, mean, std, imagenet_stem)
