"""Readers of the image datasets (CIFAR-10/100, Tiny-ImageNet, ImageNet)
through torchvision; app.datasets imports this module only when one of them
is asked for. Layouts and splits are described in app.datasets."""
import os

from torch.utils.data import Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from app.splits import DataSplits, DatasetSpec
from utils.errors import InvalidInput


class _CifarFiles(tv_datasets.CIFAR10):
    """torchvision's CIFAR reader that checks files exist instead of their
    md5 sums: the same layout, any content (tests write small fake batches)."""

    def _check_integrity(self):
        folder = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(folder, name)) for name, _ in self.train_list + self.test_list)

    def _load_meta(self):
        import pickle
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not os.path.isfile(path):
            raise InvalidInput(f"missing CIFAR metadata file {path}")
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _Cifar100Files(_CifarFiles):
    base_folder = tv_datasets.CIFAR100.base_folder
    train_list = tv_datasets.CIFAR100.train_list
    test_list = tv_datasets.CIFAR100.test_list
    meta = tv_datasets.CIFAR100.meta


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cifar(reader, num_classes, mean, std):
    def load(root):
        folder = reader.base_folder
        if os.path.basename(os.path.normpath(root)) == folder:
            root = os.path.dirname(os.path.normpath(root))
        expected = [n for n, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]
        missing = [n for n in expected if not os.path.isfile(os.path.join(root, folder, n))]
        if missing:
            raise InvalidInput(f"dataset path '{root}' lacks {folder}/{missing[0]}: expected "
                            f"{root}/{folder}/{{{','.join(expected)}}} (the python version of the dataset)")
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
        test_tf = T.ToTensor()
        try:
            full_train = reader(root, train=True, transform=train_tf)
            full_val = reader(root, train=True, transform=test_tf)
            test = reader(root, train=False, transform=test_tf)
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise InvalidInput(f"cannot read {reader.__name__} files under '{root}/{folder}': {err}") from None
        n = len(full_train)
        n_val = min(5000, n // 10)  # the paper's 45k/5k split; small fakes keep 10% for validation
        train = Subset(full_train, range(0, n - n_val))
        val = Subset(full_val, range(n - n_val, n))
        return DataSplits(train, val, test, DatasetSpec(num_classes, 3, mean, std, False, 32))
    return load


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
        return self.transform(tv_datasets.folder.default_loader(path)), label


def _image_folder(root, transform, what):
    if not os.path.isdir(root):
        raise InvalidInput(f"dataset path '{root}' not found: expected {what}")
    try:
        return tv_datasets.ImageFolder(root, transform=transform)
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
    "cifar10": _cifar(_CifarFiles, 10, CIFAR_MEAN, CIFAR_STD),
    "cifar100": _cifar(_Cifar100Files, 100, CIFAR100_MEAN, CIFAR100_STD),
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
}
