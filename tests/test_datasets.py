"""Dataset registry: bundled digits, and the CIFAR / Tiny-ImageNet / ImageNet
loaders on small fake datasets written in their real on-disk layouts."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from app.datasets import load_dataset
from conftest import ROOT
from utils.errors import InvalidInput


def test_digits_split_is_fixed_stratified_and_complete():
    data = load_dataset("digits", "unused")
    sizes = (len(data.train), len(data.val), len(data.test))
    assert sum(sizes) == 1797 and sizes == (1257, 180, 360)
    x, y = data.train[0]
    assert x.shape == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    assert data.spec.num_classes == 10 and data.spec.in_channels == 1
    again = load_dataset("digits", "unused")
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])
    # stratified: every class in every split
    for split in (data.train, data.val, data.test):
        assert set(split.tensors[1].tolist()) == set(range(10))


def test_digits_are_scikit_learns_with_its_split_and_load_without_it():
    """The stored split is the one scikit-learn's stratified train_test_split
    (random_state 0) makes, over the images load_digits gives; a fresh
    interpreter loads the dataset without importing scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    index = np.arange(len(bunch.target))
    train_val, test = train_test_split(index, test_size=0.2, stratify=bunch.target, random_state=0)
    train, val = train_test_split(train_val, test_size=0.125, stratify=bunch.target[train_val], random_state=0)
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    data = load_dataset("digits", "")
    for part, ix in ((data.train, train), (data.val, val), (data.test, test)):
        assert torch.equal(part.tensors[0], images[ix]) and torch.equal(part.tensors[1], torch.tensor(bunch.target[ix]))
    code = ("import sys; from app.datasets import load_dataset; d = load_dataset('digits', ''); "
            "print(len(d.train), 'sklearn' in sys.modules)")
    fresh = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert fresh.stdout.split() == ["1257", "False"], fresh.stderr


def _cifar_batch(path, n, label_key, num_classes, rng):
    entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: rng.integers(0, num_classes, n).tolist()}
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def make_fake_cifar10(root, per_batch=20):
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for i in range(1, 6):
        _cifar_batch(os.path.join(folder, f"data_batch_{i}"), per_batch, "labels", 10, rng)
    _cifar_batch(os.path.join(folder, "test_batch"), per_batch, "labels", 10, rng)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_layout_and_45k_5k_style_split(tmp_path):
    make_fake_cifar10(tmp_path)
    data = load_dataset("cifar10", str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)  # 10% validation on small files
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    # validation is the tail of the training set, without augmentation
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        last = pickle.load(f)
    tail = torch.tensor(last["data"][-10:]).reshape(10, 3, 32, 32).float() / 255
    assert torch.equal(torch.stack([data.val[i][0] for i in range(10)]), tail)
    assert [data.val[i][1] for i in range(10)] == last["labels"][-10:]
    also = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"))
    assert len(also.test) == 20


def test_cifar100_layout(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 30, "fine_labels", 100, rng)
    _cifar_batch(folder / "test", 12, "fine_labels", 100, rng)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    data = load_dataset("cifar100", str(tmp_path))
    assert data.spec.num_classes == 100
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 12)


def _write_images(folder, n, size, ext="JPEG"):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"img{i}.{ext}"))


def test_imagenet_folder_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            _write_images(tmp_path / split / wnid, n, 40)
    data = load_dataset("imagenet", str(tmp_path))
    assert data.spec.num_classes == 2 and data.spec.imagenet_stem
    # one of each class's 3 training images validates (held out); the official val/ tests
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 4)
    x, y = data.test[0]
    assert x.shape == (3, 224, 224)


def test_tiny_imagenet_with_val_annotations(tmp_path):
    wnids = ["n01443537", "n01629819"]
    for wnid in wnids:
        _write_images(tmp_path / "train" / wnid / "images", 3, 64)
    _write_images(tmp_path / "val" / "images", 4, 64)
    with open(tmp_path / "val" / "val_annotations.txt", "w") as f:
        for i in range(4):
            f.write(f"img{i}.JPEG\t{wnids[i % 2]}\t0\t0\t63\t63\n")
    data = load_dataset("tiny-imagenet", str(tmp_path))
    assert len(data.train) + len(data.val) == 6 and len(data.val) == 1 and len(data.test) == 4  # 90/10; official val tests
    assert [data.test[i][1] for i in range(4)] == [0, 1, 0, 1]
    assert data.test[0][0].shape == (3, 64, 64) and data.train[0][0].shape == (3, 64, 64)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet", "tiny-imagenet"])
def test_missing_path_names_path_and_layout(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InvalidInput, match="nowhere.*expected|nowhere.* lacks"):
        load_dataset(name, str(missing))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(InvalidInput, match="valid: cifar10, cifar100, digits"):
        load_dataset("mnist", "x")
