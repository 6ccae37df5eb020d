"""Model registry: architecture name -> constructor.

Every constructor takes (num_classes, in_channels, mean, std, imagenet_stem)
and returns a model whose first module is `normalize`. A new architecture
is one file here plus its entry in MODELS; what slimming and the permuted
regrouped model need to know of it, its modules declare
(models/structure.py). This package imports nothing else of ours.
"""
from models.mobilenet import MobileNetV1
from models.resnet import resnet18, resnet20s, resnet34, resnet50, resnet56s, wrn32_2
from models.vgg import vgg16_bn

MODELS = {
    "res18": resnet18,
    "res34": resnet34,
    "res20s": resnet20s,
    "res56s": resnet56s,
    "res50": resnet50,
    "vgg16_bn": vgg16_bn,
    "wrn32": wrn32_2,
    "mobilenet": MobileNetV1,
}


def model_names():
    return sorted(MODELS)


def build_model(arch, num_classes, in_channels=3, mean=None, std=None, imagenet_stem=False):
    """Build `arch`; unknown names raise ValueError listing the valid ones.
    mean/std default to 0/1 per input channel (no normalisation)."""
    mean = (0.0,) * in_channels if mean is None else mean
    std = (1.0,) * in_channels if std is None else std
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values (one per input channel), got {len(mean)}/{len(std)}")
    if arch not in MODELS:
        raise ValueError(f"unknown architecture '{arch}'; valid: {', '.join(model_names())}")
    return MODELS[arch](num_classes, in_channels, mean, std, imagenet_stem)
