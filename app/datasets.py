"""Dataset registry: name -> loader of (train, val, test) datasets + spec.

Images reach the model as float tensors in [0, 1]; normalisation lives in
the model (`models.normalize`), so `spec.mean`/`spec.std` travel with it.

- digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, no
  download); a fixed stratified 70/10/20 train/val/test split.
- cifar10 / cifar100: the python-pickle release under
  `<data>/cifar-10-batches-py` (`cifar-100-python`), read without running
  code (app.cifar); validation is the last 5,000 training images, so
  training uses 45,000; test is the test batch. `download=True` fetches it.
  Both are held in memory (app.splits.InMemory: app.batches keeps them on
  the training device).
- tiny-imagenet: `<data>/train/<wnid>/images/*.JPEG`: 90,000 train and
  10,000 validate (a fixed split stored in app/tiny_imagenet_split.json, or
  the permutation of --split_file, e.g. the original code's .npy); the
  official `<data>/val/` (val_annotations.txt or a `val/<wnid>/` tree) tests.
- imagenet: ImageFolder layout `<data>/train/<wnid>/*`, `<data>/val/<wnid>/*`:
  10 training images per class (fixed by their names' hashes) validate, the
  official val/ tests.
No split is both validation and test: the epoch a run keeps is chosen on
data it is not tested on.
"""
import gzip
import importlib.util
import json
import os

import numpy as np
import torch
from app.splits import DatasetSpec, DataSplits, Tensors  # noqa: F401 (re-exported: callers name them from here)
from models import build_model
from utils.errors import InvalidInput

DIGITS_SPLIT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_split.json")


def digits_arrays():
    """(images [1797, 8, 8] float64, labels [1797] int64): scikit-learn's
    bundled digits, read from its data file without importing scikit-learn
    (which takes 1.5-2 s, a quarter of a short run's start-up)."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    paths = [os.path.join(folder, "datasets", "data", "digits.csv.gz") for folder in folders]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise InvalidInput("the digits dataset is scikit-learn's bundled copy and scikit-learn is not installed: "
                           "pip install -r requirements.txt")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # a row: 64 pixel values 0..16, then the label
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _digits(root, download=False, split_file=None):
    images, labels = digits_arrays()
    images = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    labels = torch.tensor(labels, dtype=torch.long)
    # The split is fixed and stored (it never depends on --seed, so test sets stay comparable): scikit-learn's
    # stratified train_test_split with random_state 0, as the file says; tests/test_datasets.py remakes it.
    with open(DIGITS_SPLIT_FILE) as f:
        split = {name: torch.tensor(ix) for name, ix in json.load(f).items() if name in ("train", "val", "test")}
    spec = DatasetSpec(10, 1, (images[split["train"]].mean().item(),), (images[split["train"]].std().item(),), False, 8)

    def part(ix):
        return Tensors(images[ix], labels[ix])

    return DataSplits(part(split["train"]), part(split["val"]), part(split["test"]), spec)


def _needs_torchvision(name):
    """The loader of an image dataset, imported on first use: torchvision
    takes ~3 s to import (it pulls in torch._dynamo), which every script
    start and every digits run would otherwise pay."""
    def load(root, download=False, split_file=None):
        from app import image_datasets
        if download and name not in DOWNLOADABLE:
            raise InvalidInput(f"--download fetches {' and '.join(DOWNLOADABLE)}; {name} cannot be downloaded here: "
                               f"put it at '{root}' (see the layout in README's datasets table)")
        if name in DOWNLOADABLE:
            return image_datasets.LOADERS[name](root, download=download)
        return image_datasets.LOADERS[name](root, split_file=split_file)
    return load


DOWNLOADABLE = ("cifar10", "cifar100")  # torchvision's md5-checked archives; digits is bundled, ImageNet needs a login

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


def load_dataset(name, root, download=False, split_file=None):
    """(train, val, test, spec) for `name`; unknown names and unreadable
    paths raise InvalidInput with the valid names / expected layout. With
    `download`, CIFAR files missing under `root` are fetched first;
    `split_file`: Tiny-ImageNet's train/validation permutation."""
    if name not in DATASETS:
        raise InvalidInput(f"unknown dataset '{name}'; valid: {', '.join(dataset_names())}")
    return DATASETS[name](root, download=download, split_file=split_file)


def make_loader(dataset, batch_size, shuffle, workers, seed=None, sampler=None, pin_memory=False):
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, generator=generator, pin_memory=pin_memory,
        persistent_workers=False, drop_last=False)
