"""Checkpoints in the original code's format, written atomically.

A checkpoint is a dict with `state, result, epoch, state_dict, best_sa,
optimizer, scheduler, init_weight` (plus our own keys, which the original
tools ignore). Pruned layers appear in `state_dict` as `<layer>.weight_orig`
and `<layer>.weight_mask` (torch.nn.utils.prune's names); `init_weight` is
the rewind point as a plain state dict.

`save_atomic` writes a temporary file in the same directory, fsyncs it and
renames it over the target, so a run killed at any moment leaves every
checkpoint complete or absent.
"""
import os
import re
import tempfile

import torch

from utils.errors import UserError


def save_atomic(obj, path):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_file(path, what="checkpoint"):
    """torch.load on the CPU, turning unreadable files into one-line errors."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} '{path}' not found")
    try:
        # weights_only=False: the original code's checkpoints pickle argparse
        # Namespaces and optimizer states; only load files you trust.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(f"{what} '{path}' is not a readable PyTorch file ({type(err).__name__}: {err})") from None


def state_dict_of(obj, path="<object>"):
    """The model state dict inside a checkpoint (or a bare state dict), with
    DataParallel's `module.` prefix removed."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"'{path}' holds no model state dict (expected a checkpoint with 'state_dict' or a state dict)")
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


def checkpoint_path(save_dir, state):
    return os.path.join(save_dir, f"{state}checkpoint.pth.tar")


def best_path(save_dir, state):
    return os.path.join(save_dir, f"{state}model_SA_best.pth.tar")


def latest_checkpoint(save_dir):
    """The `{i}checkpoint.pth.tar` with the largest i, or None."""
    if not os.path.isdir(save_dir):
        return None
    states = [int(m.group(1)) for m in map(CHECKPOINT_RE.match, os.listdir(save_dir)) if m]
    return checkpoint_path(save_dir, max(states)) if states else None
