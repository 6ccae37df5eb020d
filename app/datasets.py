"""Dataset registry: name -> loader of (train, val, test) datasets + spec.

Images reach the model as float tensors in [0, 1]; normalisation lives in
the model (`models.normalize`), so `spec.mean`/`spec.std` travel with it.

- digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, no
  download); a fixed stratified 70/10/20 train/val/test split.
- cifar10 / cifar100: the python-pickle release under
  `<data>/cifar-10-batches-py` (`cifar-100-python`); validation is the last
  5,000 training images, so training uses 45,000; test is the test batch.
- tiny-imagenet: `<data>/train/<wnid>/images/*.JPEG`, validation from
  `<data>/val/val_annotations.txt` (or a `val/<wnid>/` folder tree); the
  validation set is also the test set (its labels are the public ones).
- imagenet: ImageFolder layout `<data>/train/<wnid>/*`, `<data>/val/<wnid>/*`;
  validation is also the test set.
"""
import numpy as np
import torch
from torch.utils.data import TensorDataset

from app.splits import DatasetSpec, DataSplits  # noqa: F401 (re-exported: callers name them from here)
from models import build_model
from utils.errors import InvalidInput

DIGITS_SPLIT_SEED = 0  # the split never depends on --seed: test sets stay comparable


def _digits(root):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    labels = torch.tensor(bunch.target, dtype=torch.long)
    index = np.arange(len(labels))
    train_val, test = train_test_split(index, test_size=0.2, stratify=bunch.target, random_state=DIGITS_SPLIT_SEED)
    train, val = train_test_split(train_val, test_size=0.125, stratify=bunch.target[train_val],
                                  random_state=DIGITS_SPLIT_SEED)
    x_train = images[train]
    spec = DatasetSpec(10, 1, (x_train.mean().item(),), (x_train.std().item(),), False, 8)

    def part(ix):
        return TensorDataset(images[ix], labels[ix])

    return DataSplits(part(train), part(val), part(test), spec)


def _needs_torchvision(name):
    """The loader of an image dataset, imported on first use: torchvision
    takes ~3 s to import (it pulls in torch._dynamo), which every script
    start and every digits run would otherwise pay."""
    def load(root):
        from app import image_datasets
        return image_datasets.LOADERS[name](root)
    return load


DATASETS = {
    "digits": _digits,
    "cifar10": _needs_torchvision("cifar10"),
    "cifar100": _needs_torchvision("cifar100"),
    "tiny-imagenet": _needs_torchvision("tiny-imagenet"),
    "imagenet": _needs_torchvision("imagenet"),
}


def model_for(arch, spec):
    """Architecture `arch` built for a dataset with this DatasetSpec (classes,
    input channels, normalisation, stem)."""
    return build_model(arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)


def dataset_names():
    return sorted(DATASETS)


def load_dataset(name, root):
    """(train, val, test, spec) for `name`; unknown names and unreadable
    paths raise InvalidInput with the valid names / expected layout."""
    if name not in DATASETS:
        raise InvalidInput(f"unknown dataset '{name}'; valid: {', '.join(dataset_names())}")
    return DATASETS[name](root)


def make_loader(dataset, batch_size, shuffle, workers, seed=None, sampler=None, pin_memory=False):
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, generator=generator, pin_memory=pin_memory,
        persistent_workers=False, drop_last=False)
