"""Readers of the image datasets: CIFAR-10/100 from their python batches
(app.cifar: read without running code, checked, downloaded on request),
Tiny-ImageNet and ImageNet through torchvision's folder readers. app.datasets
imports this module only when one of them is asked for. Layouts and splits
are described in app.datasets."""
import os

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from app import cifar
from app.splits import DataSplits, DatasetSpec
from utils.errors import InvalidInput


class CifarImages(Dataset):
    """CIFAR images held in memory (uint8 HWC) with their labels; items are
    (transform(PIL image), label), as torchvision's CIFAR reader gives them."""

    def __init__(self, images, labels, classes, transform):
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform

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
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
        test_tf = T.ToTensor()
        n = len(train_labels)
        n_val = min(5000, n // 10)  # the paper's 45k/5k split; small fakes keep 10% for validation
        train = CifarImages(train_images[: n - n_val], train_labels[: n - n_val], classes, train_tf)
        val = CifarImages(train_images[n - n_val:], train_labels[n - n_val:], classes, test_tf)
        test = CifarImages(test_images, test_labels, classes, test_tf)
        return DataSplits(train, val, test, DatasetSpec(release.num_classes, 3, mean, std, False, 32))
    return load


def read_image(path):
    """An RGB PIL image; a file PIL cannot read names its path (also when met in a data-loader worker)."""
    try:
        return tv_datasets.folder.default_loader(path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated files
        reason = "not an image file PIL recognises" if isinstance(err, UnidentifiedImageError) else err
        raise InvalidInput(f"cannot read image '{path}': {reason}") from None


class _TinyImageNetVal(Dataset):
    """Tiny-ImageNet's official validation folder: `val/images/*.JPEG` with
    labels in `val/val_annotations.txt` (file, wnid, box...)."""

    def __init__(self, folder, class_to_idx, transform):
        self.transform = transform
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
        return self.transform(read_image(path)), label


def _image_folder(root, transform, what):
    if not os.path.isdir(root):
        raise InvalidInput(f"dataset path '{root}' not found: expected {what}")
    try:
        return tv_datasets.ImageFolder(root, transform=transform, loader=read_image)
    except (FileNotFoundError, OSError) as err:
        raise InvalidInput(f"cannot read '{root}' as {what}: {err}") from None


def _tiny_imagenet(root):
    train_tf = T.Compose([T.RandomCrop(64, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    test_tf = T.ToTensor()
    layout = "train/<wnid>/images/*.JPEG and val/images/*.JPEG + val/val_annotations.txt"
    train = _image_folder(os.path.join(root, "train"), train_tf, f"Tiny-ImageNet layout ({layout})")
    val_dir = os.path.join(root, "val")
    if os.path.isfile(os.path.join(val_dir, "val_annotations.txt")):
        val = _TinyImageNetVal(val_dir, train.class_to_idx, test_tf)
    else:
        val = _image_folder(val_dir, test_tf, f"Tiny-ImageNet layout ({layout})")
    spec = DatasetSpec(len(train.classes), 3, IMAGENET_MEAN, IMAGENET_STD, True, 64)
    return DataSplits(train, val, val, spec)


def _imagenet(root):
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    layout = "ImageFolder layout (train/<class>/*.JPEG, val/<class>/*.JPEG)"
    train = _image_folder(os.path.join(root, "train"), train_tf, layout)
    val = _image_folder(os.path.join(root, "val"), test_tf, layout)
    if val.classes != train.classes:
        raise InvalidInput(f"'{root}/val' has {len(val.classes)} classes, '{root}/train' has {len(train.classes)}: they must match")
    spec = DatasetSpec(len(train.classes), 3, IMAGENET_MEAN, IMAGENET_STD, True, 224)
    return DataSplits(train, val, val, spec)


LOADERS = {
    "cifar10": _cifar("cifar10", CIFAR_MEAN, CIFAR_STD),
    "cifar100": _cifar("cifar100", CIFAR100_MEAN, CIFAR100_STD),
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
}
