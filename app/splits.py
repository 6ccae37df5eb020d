"""What a dataset loader returns: the three splits and the facts about the
images that a model is built for. Shared by app.datasets (digits and the
registry) and app.image_datasets (the torchvision readers)."""
from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class DatasetSpec:
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    imagenet_stem: bool  # ImageNet-style 7x7/stride-2 stem for ResNets
    image_size: int


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    spec: DatasetSpec
