"""What a dataset loader returns: the three splits and the facts about the
images that a model is built for. Shared by app.datasets (digits and the
registry) and app.image_datasets (the torchvision readers)."""
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset


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


@dataclass
class InMemory:
    """A split held as tensors, which app.batches can keep on the training
    device: images [N, C, H, W] (uint8, read as /255, or float in [0, 1]),
    labels [N] int64, and the training augmentation its per-image
    transforms apply: a random crop of the image size from a copy padded by
    `crop_padding` zero pixels per side, a horizontal flip with probability
    1/2 (`flip`)."""
    images: torch.Tensor
    labels: torch.Tensor
    crop_padding: int = 0
    flip: bool = False


class Tensors(TensorDataset):
    """A TensorDataset of (images, labels) without augmentation, also held `in_memory`."""

    @property
    def in_memory(self):
        return InMemory(*self.tensors)
