"""CIFAR-10/100's python batches, read as data and never as code, checked,
and downloaded on request.

The batches are pickles, and unpickling an arbitrary file runs whatever it
names. `read_pickle` allows only what a genuine CIFAR file needs (dicts,
lists, strings, numbers and numpy's array reconstruction); any other global
stops the read with one line naming the file and the global, before it is
called. `read_split` then checks what the batches hold (uint8 images of
3x32x32, one label per image within the classes), so a wrong or damaged file
fails in one line before any training. `download` fetches the official
archive through torchvision's downloader and its md5 check.
"""
import os
import pickle
import tarfile
import urllib.error
from dataclasses import dataclass

import numpy as np

from utils.errors import InvalidInput

_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global a CIFAR batch never needs."""


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python-3 pickles of bytes use it (protocols 0-2), and only that way."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"'_codecs.encode' with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> the object unpickling may call. Real CIFAR files name numpy.core.multiarray (Python 2
# pickles); pickles written by numpy 2 name numpy._core; protocol 5 pickles arrays through _frombuffer.
ALLOWED_GLOBALS = {
    **{(module, "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _NUMPY_CORE.multiarray.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _NUMPY_CORE.numeric._frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedGlobal(f"'{module}.{name}'")
        return found

    def persistent_load(self, pid):
        raise RefusedGlobal(f"a persistent id ({pid!r})")


def read_pickle(path):
    """The object pickled in `path`, unpickled with only ALLOWED_GLOBALS
    (strings as Python 2's CIFAR files need them: latin-1)."""
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as err:
        raise InvalidInput(f"'{path}' asks to run {err} while loading, which a CIFAR data file never needs: "
                           "refused, nothing from it was run") from None
    except OSError as err:
        raise InvalidInput(f"cannot read '{path}': {err.strerror}") from None
    except Exception as err:  # garbage makes the unpickler raise many types (EOFError, ValueError, KeyError, ...)
        what = "truncated" if isinstance(err, EOFError) or "truncated" in str(err) else "not a python pickle"
        raise InvalidInput(f"'{path}' is {what} ({type(err).__name__}: {str(err)[:80]}): "
                           "expected a batch of the python version of CIFAR") from None


@dataclass(frozen=True)
class CifarRelease:
    """One CIFAR release: its folder, files, label key and official archive."""
    name: str
    folder: str
    train_files: tuple
    test_files: tuple
    meta_file: str
    meta_key: str  # the class names in the meta file
    label_key: str  # the labels in a batch
    num_classes: int
    url: str
    md5: str  # of the archive at `url`

    @property
    def files(self):
        return self.train_files + self.test_files + (self.meta_file,)

    @property
    def archive(self):
        return os.path.basename(self.url)


CIFAR10 = CifarRelease("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                       "batches.meta", "label_names", "labels", 10,
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR100 = CifarRelease("cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_label_names",
                        "fine_labels", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85")
RELEASES = {r.name: r for r in (CIFAR10, CIFAR100)}

IMAGE_BYTES = 3 * 32 * 32  # a CIFAR row: 1024 red, 1024 green, 1024 blue values


def _batch(path, release):
    """(images [n, 32, 32, 3] uint8, labels [n] int64) of one batch file, checked."""
    entry = read_pickle(path)
    if not isinstance(entry, dict) or "data" not in entry or release.label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise InvalidInput(f"'{path}' is not a CIFAR batch: expected a dict with 'data' and '{release.label_key}', "
                           f"found {keys}")
    data, labels = entry["data"], entry[release.label_key]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == IMAGE_BYTES):
        found = f"{data.dtype} of shape {tuple(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InvalidInput(f"'{path}': 'data' must be uint8 of shape (n, {IMAGE_BYTES}), found {found}")
    try:
        labels = np.asarray(labels)
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    except (TypeError, ValueError):
        ok = False
    if not ok or len(labels) != len(data):
        count = len(labels) if hasattr(labels, "__len__") else "no"
        raise InvalidInput(f"'{path}': '{release.label_key}' must be {len(data)} integer labels, one per image; "
                           f"found {count} ({getattr(labels, 'dtype', type(labels).__name__)})")
    outside = labels[(labels < 0) | (labels >= release.num_classes)]
    if len(outside):
        raise InvalidInput(f"'{path}': label {int(outside[0])} is outside the {release.num_classes} classes "
                           f"(0..{release.num_classes - 1})")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def class_names(folder, release):
    """The class names in the meta file, checked against the number of classes."""
    path = os.path.join(folder, release.meta_file)
    meta = read_pickle(path)
    names = meta.get(release.meta_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != release.num_classes:
        raise InvalidInput(f"'{path}' must hold '{release.meta_key}': a list of {release.num_classes} class names")
    return names


def read_split(folder, release, train):
    """(images [n, 32, 32, 3] uint8 HWC, labels [n] int64) of the training
    or test batches in `folder`."""
    parts = [_batch(os.path.join(folder, name), release)
             for name in (release.train_files if train else release.test_files)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def missing_files(root, release):
    return [n for n in release.files if not os.path.isfile(os.path.join(root, release.folder, n))]


def download(root, release):
    """Fetch and unpack the official archive into `root` (md5-checked by
    torchvision's downloader); a failed check removes the file."""
    from torchvision.datasets.utils import check_integrity, download_url

    archive = os.path.join(root, release.archive)
    print(f"--download: fetching {release.url} into {root}", flush=True)
    try:
        os.makedirs(root, exist_ok=True)
        download_url(release.url, root, release.archive, release.md5)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise InvalidInput(f"--download: cannot fetch {release.url} ({reason}); without internet access, put the "
                           f"python version of {release.name} at {os.path.join(root, release.folder)}/") from None
    except RuntimeError:  # torchvision: "File not found or corrupted." (the md5 differs)
        if os.path.exists(archive) and not check_integrity(archive, release.md5):
            os.unlink(archive)
        raise InvalidInput(f"--download: {release.url} did not match its md5 {release.md5}: refused and removed; "
                           "nothing was unpacked") from None
    with tarfile.open(archive, "r:gz") as tar:
        # "data": no absolute paths, links or devices outside `root` (Python >= 3.11.4 / 3.12).
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root, **options)
    if missing_files(root, release):
        raise InvalidInput(f"--download: {archive} lacks {release.folder}/{missing_files(root, release)[0]}")

