"""Readers of the image datasets: CIFAR-10/100 from their python batches
(app.cifar: read without running code, checked, downloaded on request),
Tiny-ImageNet and ImageNet through torchvision's folder readers. app.datasets
imports this module only when one of them is asked for. Layouts and splits
are described in app.datasets."""
import functools
import hashlib
import json
import os
import re
import warnings

import numpy as np
import torch

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from app import cifar
from app.splits import DataSplits, DatasetSpec, InMemory
from utils.errors import InvalidInput


class CifarImages(Dataset):
    """CIFAR images held in memory (uint8 HWC) with their labels; items are
    (transform(PIL image), label), as torchvision's CIFAR reader gives them.
    `in_memory`: the same images as tensors with the augmentation of
    `transform` (padding 4 and flips for training), for app.batches."""

    def __init__(self, images, labels, classes, transform, crop_padding=0, flip=False):
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform
        self.crop_padding, self.flip = crop_padding, flip

    @functools.cached_property
    def in_memory(self):
        images = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).contiguous()
        return InMemory(images, torch.as_tensor(np.asarray(self.labels), dtype=torch.long), self.crop_padding, self.flip)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cifar(name, mean, std):
    def load(root, download=False):
        release = cifar.RELEASES[name]
        folder = release.folder
        if os.path.basename(os.path.normpath(root)) == folder:
            root = os.path.dirname(os.path.normpath(root))
        if download and cifar.missing_files(root, release):
            cifar.download(root, release)
        missing = cifar.missing_files(root, release)
        if missing:
            raise InvalidInput(f"dataset path '{root}' lacks {folder}/{missing[0]}: expected "
                               f"{root}/{folder}/{{{','.join(release.files)}}} (the python version of the dataset; "
                               "--download fetches it)")
        folder = os.path.join(root, folder)
        classes = cifar.class_names(folder, release)
        train_images, train_labels = cifar.read_split(folder, release, train=True)
        test_images, test_labels = cifar.read_split(folder, release, train=False)
        return cifar_splits(train_images, train_labels, test_images, test_labels, classes, mean, std)
    return load


def cifar_splits(train_images, train_labels, test_images, test_labels, classes, mean, std, n_val=None):
    """DataSplits of CIFAR arrays (uint8 [n, 32, 32, 3], labels): the last
    `n_val` training images validate (default 5,000, the paper's 45k/5k split;
    10% of a smaller set), the test batch tests; training augments with
    RandomCrop(32, padding=4) and flips."""
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    test_tf = T.ToTensor()
    n = len(train_labels)
    n_val = min(5000, n // 10) if n_val is None else n_val
    train = CifarImages(train_images[: n - n_val], train_labels[: n - n_val], classes, train_tf, crop_padding=4,
                        flip=True)  # train_tf's draws, for the device-resident path
    val = CifarImages(train_images[n - n_val:], train_labels[n - n_val:], classes, test_tf)
    test = CifarImages(test_images, test_labels, classes, test_tf)
    return DataSplits(train, val, test, DatasetSpec(len(classes), 3, mean, std, False, 32))


def read_image(path):
    """An RGB PIL image; a file PIL cannot read names its path (also when met
    in a data-loader worker). An image larger than PIL's decompression-bomb
    limit (Image.MAX_IMAGE_PIXELS, 89 Mpx: PIL warns above it, refuses above
    twice it) is unreadable too: a few kB on disk can claim gigabytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return tv_datasets.folder.default_loader(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))  # PIL names the size it read from the header
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels than"
        raise InvalidInput(f"cannot read image '{path}': {size}, over PIL's decompression-bomb limit of "
                           f"{Image.MAX_IMAGE_PIXELS:,} (a few kB on disk can claim gigabytes): refused unread") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated files
        reason = "not an image file PIL recognises" if isinstance(err, UnidentifiedImageError) else err
        raise InvalidInput(f"cannot read image '{path}': {reason}") from None


class _TinyImageNetVal(Dataset):
    """Tiny-ImageNet's official validation folder: `val/images/*.JPEG` with
    labels in `val/val_annotations.txt` (file, wnid, box...)."""

    def __init__(self, folder, class_to_idx, transform, reader=None):
        self.transform, self.reader = transform, reader or read_image
        self.samples = []
        with open(os.path.join(folder, "val_annotations.txt")) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 2:
                    continue
                if fields[1] not in class_to_idx:
                    raise InvalidInput(f"{folder}/val_annotations.txt names class {fields[1]} absent from train/")
                self.samples.append((os.path.join(folder, "images", fields[0]), class_to_idx[fields[1]]))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(self.reader(path)), label


def _image_folder(root, transform, what, loader=read_image):
    if not os.path.isdir(root):
        raise InvalidInput(f"dataset path '{root}' not found: expected {what}")
    try:
        return tv_datasets.ImageFolder(root, transform=transform, loader=loader)
    except (FileNotFoundError, OSError) as err:
        raise InvalidInput(f"cannot read '{root}' as {what}: {err}") from None


class Transformed(Dataset):
    """Items `indices` of `base` (an ImageFolder without a transform) through
    `transform`: a training and a validation split of one folder, each with
    its own transforms."""

    def __init__(self, base, indices, transform):
        self.base, self.indices, self.transform = base, list(indices), transform
        self.classes = base.classes

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, label = self.base[self.indices[i]]
        return self.transform(image), label


TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)  # the original code's Tiny-ImageNet values
TINY_SPLIT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_imagenet_split.json")
TINY_TRAIN_IMAGES = 100_000


def read_sized_image(path, size):
    """read_image, refusing an image of another size in one line (a batch of mixed sizes cannot be made)."""
    image = read_image(path)
    if image.size != size:
        raise InvalidInput(f"image '{path}' is {image.size[0]}x{image.size[1]}: this dataset's images are "
                           f"{size[0]}x{size[1]}")
    return image


def split_permutation(path, n):
    """A permutation of range(n) from --split_file: the original code's .npy
    (read without pickle) or a JSON list."""
    try:
        if path.endswith(".json"):
            with open(path) as f:
                order = np.asarray(json.load(f))
        else:
            order = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InvalidInput(f"--split_file '{path}' is not a readable .npy or JSON list of image indices "
                           f"({type(err).__name__}: {err})") from None
    order = np.asarray(order).reshape(-1)
    if order.dtype.kind not in "iu" or len(order) != n or not np.array_equal(np.sort(order), np.arange(n)):
        raise InvalidInput(f"--split_file '{path}' must be a permutation of the {n} training images' indices, found "
                           f"{len(order)} {order.dtype} value(s)")
    return order.tolist()


def tiny_imagenet_split(n, split_file=None):
    """(train indices, validation indices) of Tiny-ImageNet's n training
    images: with --split_file, its permutation's first 90% train and the
    rest validate (the original code's file: 90,000 / 10,000); else the
    stored split of the official 100,000 (app/tiny_imagenet_split.json); a
    tree of another size gets a seeded 90/10 split of its own (said in one line)."""
    if split_file:
        order = split_permutation(split_file, n)
        cut = n - validation_count(n)
        return order[:cut], order[cut:]
    if n == TINY_TRAIN_IMAGES:
        with open(TINY_SPLIT_FILE) as f:
            val = json.load(f)["val"]
        return the_rest(n, val), val
    print(f"tiny-imagenet: {n} training images, not the official {TINY_TRAIN_IMAGES:,}: a seeded 90/10 split of its "
          "own (--split_file gives one)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    cut = n - validation_count(n)
    return sorted(order[:cut]), sorted(order[cut:])


def the_rest(n, held):
    """Indices 0..n-1 not in `held`, in order: the training part of a split whose validation part is `held`."""
    held = set(held)
    return [i for i in range(n) if i not in held]


def validation_count(n):
    """A tenth of n training images validate (10,000 of 100,000), at least one."""
    return max(1, n // 10) if n > 1 else 0


def _tiny_imagenet(root, split_file=None):
    """The paper's protocol (the original code's): 90% of train/ trains, 10%
    validates (tiny_imagenet_split), the official val/ tests; training
    augments with RandomRotation(20) and flips, 64x64 images, the original's
    normalisation and its CIFAR stem (3x3, no max-pool)."""
    train_tf = T.Compose([T.RandomRotation(20), T.RandomHorizontalFlip(), T.ToTensor()])
    test_tf = T.ToTensor()
    layout = "train/<wnid>/images/*.JPEG and val/images/*.JPEG + val/val_annotations.txt"
    reader = functools.partial(read_sized_image, size=(64, 64))
    images = _image_folder(os.path.join(root, "train"), None, f"Tiny-ImageNet layout ({layout})", reader)
    train_ix, val_ix = tiny_imagenet_split(len(images), split_file)
    val_dir = os.path.join(root, "val")
    if os.path.isfile(os.path.join(val_dir, "val_annotations.txt")):
        test = _TinyImageNetVal(val_dir, images.class_to_idx, test_tf, reader)
    else:
        test = _image_folder(val_dir, test_tf, f"Tiny-ImageNet layout ({layout})", reader)
    spec = DatasetSpec(len(images.classes), 3, TINY_MEAN, TINY_STD, False, 64)
    return DataSplits(Transformed(images, train_ix, train_tf), Transformed(images, val_ix, test_tf), test, spec)


IMAGENET_VAL_PER_CLASS = 10  # training images per class held out to validate: 10,000 of ImageNet's 1.28M


def held_out(samples, per_class=IMAGENET_VAL_PER_CLASS):
    """Indices of the training images that validate: in each class the
    `per_class` (at most a tenth of the class, at least one) whose file names
    hash lowest (sha256), a choice fixed across machines and listing orders."""
    by_class = {}
    for i, (path, label) in enumerate(samples):
        by_class.setdefault(label, []).append((hashlib.sha256(os.path.basename(path).encode()).hexdigest(), i))
    chosen = []
    for members in by_class.values():
        count = min(per_class, max(1, len(members) // 10)) if len(members) > 1 else 0
        chosen += [i for _, i in sorted(members)[:count]]
    return sorted(chosen)


def _imagenet(root, split_file=None):
    """Train on train/ less a held-out part that validates (held_out), test
    on the official val/."""
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    layout = "ImageFolder layout (train/<class>/*.JPEG, val/<class>/*.JPEG)"
    images = _image_folder(os.path.join(root, "train"), None, layout)
    test = _image_folder(os.path.join(root, "val"), test_tf, layout)
    if test.classes != images.classes:
        raise InvalidInput(f"'{root}/val' has {len(test.classes)} classes, '{root}/train' has {len(images.classes)}: "
                           "they must match")
    val_ix = held_out(images.samples)
    train_ix = the_rest(len(images), val_ix)
    spec = DatasetSpec(len(images.classes), 3, IMAGENET_MEAN, IMAGENET_STD, True, 224)
    return DataSplits(Transformed(images, train_ix, train_tf), Transformed(images, val_ix, test_tf), test, spec)


LOADERS = {
    "cifar10": _cifar("cifar10", CIFAR_MEAN, CIFAR_STD),
    "cifar100": _cifar("cifar100", CIFAR100_MEAN, CIFAR100_STD),
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
}
