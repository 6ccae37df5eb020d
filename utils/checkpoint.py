"""Checkpoints in the original code's format, written atomically.

A checkpoint is a dict with `state, result, epoch, state_dict, best_sa,
optimizer, scheduler, init_weight` (plus our own keys, which the original
tools ignore). Pruned layers appear in `state_dict` as `<layer>.weight_orig`
and `<layer>.weight_mask` (torch.nn.utils.prune's names); `init_weight` is
the rewind point as a plain state dict.

`atomic_write` (behind `save_atomic` for checkpoints, app.report's
write_json and save_figure for JSON and plots) writes a temporary file in
the same directory, fsyncs it and renames it over the target, so a run
killed at any moment leaves every file complete or absent; a full disk or a
failing device raises StorageFull naming the file, and leaves no temporary
file behind. Every file name of a run directory is spelled here
(`checkpoint_path`, `best_path`, `summary_path`, `lock_path`, ...).

`load_file` never runs code from a file unless told to: it loads with
`weights_only=True`, allowing by name only the plain types checkpoints hold
(SAFE_GLOBALS); a file that needs anything else is refused with one line
naming the global. `trust=True` (the scripts' `--trust_checkpoint`) loads it
with full unpickling, after a one-line warning.
"""
import argparse
import contextlib
import errno
import os
import pickle
import re
import sys
import tempfile

import torch

from utils.errors import InvalidInput, StorageFull


TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".tmp-", ".part"  # what a killed write can leave behind


# Why a write fails when the storage, not the program, is at fault: no space, quota, I/O error, read-only.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


def storage_error(exc):
    """The OSError of a failing device or full disk behind `exc`, or None.
    torch.save's zip writer turns the OSError of a short write into a
    RuntimeError ("unexpected pos ..."), with the OSError as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def storage_errors_named(path):
    """Turn a full disk or failing device inside the block into StorageFull naming `path`."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as err:
        cause = storage_error(err)
        if cause is None:
            raise
        raise StorageFull(f"cannot write '{path}': {os.strerror(cause.errno)}") from err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, binary=True):
    """Call write(f) on a temporary file beside `path`, fsync it, then rename
    it over `path`: readers see the old file or the complete new one. A full
    disk raises StorageFull and leaves no temporary file."""
    directory = os.path.dirname(os.path.abspath(path))
    with storage_errors_named(path):
        fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX, dir=directory)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the rest of a group
            with os.fdopen(fd, "wb" if binary else "w") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def save_atomic(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


SAFE_GLOBALS = [argparse.Namespace]  # beside tensors and containers, what the original code's files may hold
UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


TRUST_HELP = ("load files whose unpickling needs more than tensors and plain types "
              "(runs code from the file: only for files you trust)")



@contextlib.contextmanager
def staged_file(path, suffix):
    """A temporary path beside `path` to write and check a file at; renamed
    to `path` when the block ends without an exception, removed either way,
    so `path` holds the old file or a checked new one, never a broken one."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=directory)
        os.close(fd)
    except OSError as err:
        if storage_error(err):
            raise StorageFull(f"cannot write '{path}': {err.strerror}") from None
        raise InvalidInput(f"cannot write '{path}': {err.strerror}") from None
    try:
        with storage_errors_named(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_program(module, example, path, check):
    """torch.export `module` (eval mode) with a dynamic batch dimension and
    save it to `path` (a .pt2 file: loads with torch.export.load, without our
    classes and without unpickling code). The saved file is loaded back and
    given to `check(loaded_module)`, which raises to refuse it; only a file
    that passed is left at `path`."""
    batch = getattr(torch.export.Dim, "DYNAMIC", None) or torch.export.Dim("batch")
    try:
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch.export reports unsupported code with many types
        raise InvalidInput(f"torch.export could not trace the model ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0]})") from None
    with staged_file(path, ".pt2") as tmp:
        torch.export.save(program, tmp)
        check(torch.export.load(tmp).module())


def load_file(path, what="checkpoint", trust=False):
    """torch.load on the CPU without running pickled code (unless `trust`),
    turning unreadable or refused files into one-line errors."""
    if not path or not os.path.isfile(path):
        raise InvalidInput(f"{what} '{path}' not found")
    if trust:
        print(f"warning: --trust_checkpoint: loading {what} '{path}' runs any code pickled in it", file=sys.stderr)
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        return _load_weights_only(path)
    except pickle.UnpicklingError as err:
        found = UNSAFE_GLOBAL.search(str(err))
        if trust or found is None:
            raise InvalidInput(f"{what} '{path}' is not a readable PyTorch file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0]})") from None
        raise InvalidInput(f"{what} '{path}' wants to run '{found.group(1)}' while loading, which a plain checkpoint "
                        "never needs; if you trust the file, --trust_checkpoint loads it anyway") from None
    except Exception as err:  # torch raises many types for a damaged file
        raise InvalidInput(f"{what} '{path}' is not a readable PyTorch file ({type(err).__name__}: {err})") from None


def _load_weights_only(path):
    allow = getattr(torch.serialization, "safe_globals", None)  # a context manager from torch 2.5
    if allow is None:
        torch.serialization.add_safe_globals(SAFE_GLOBALS)
        return torch.load(path, map_location="cpu", weights_only=True)
    with allow(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_of(obj, path="<object>"):
    """The model state dict inside a checkpoint (or a bare state dict), with
    DataParallel's `module.` prefix removed."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidInput(f"'{path}' holds no model state dict (expected a checkpoint with 'state_dict' or a state dict)")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def plain_weights(state_dict):
    """Collapse `X.weight_orig`/`X.weight_mask` to `X.weight` = orig*mask."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[:-5] + "_orig" in state_dict:
            continue
        if key.endswith("_orig"):
            base = key[:-5]
            mask = state_dict.get(base + "_mask")
            out[base] = value * mask if mask is not None else value
        else:
            out[key] = value
    return out


CHECKPOINT_RE = re.compile(r"^(\d+)checkpoint\.pth\.tar$")


def checkpoint_path(save_dir, state=""):
    """The latest checkpoint of IMP state `state` (a retraining run: no state)."""
    return os.path.join(save_dir, f"{state}checkpoint.pth.tar")


def best_path(save_dir, state=""):
    """The best-validation checkpoint of IMP state `state` (a retraining run: no state)."""
    return os.path.join(save_dir, f"{state}model_SA_best.pth.tar")


def summary_path(save_dir):
    return os.path.join(save_dir, "summary.json")


def plot_paths(save_dir):
    """(test accuracy per epoch of every state, accuracy against sparsity): a run's two figures."""
    return os.path.join(save_dir, "accuracy_per_epoch.png"), os.path.join(save_dir, "accuracy_vs_sparsity.png")


def lock_path(save_dir):
    """The lock a live run holds on its folder (utils.run_lock)."""
    return os.path.join(save_dir, ".run.lock")


def log_path(save_dir):
    """The log of a run that experiments/reproduce.py ran in-process."""
    return os.path.join(save_dir, "log.txt")


def latest_checkpoint(save_dir):
    """The `{i}checkpoint.pth.tar` with the largest i, or None."""
    if not os.path.isdir(save_dir):
        return None
    states = [int(m.group(1)) for m in map(CHECKPOINT_RE.match, os.listdir(save_dir)) if m]
    return checkpoint_path(save_dir, max(states)) if states else None
