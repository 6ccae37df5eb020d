"""Seeding and device selection.

Determinism: every epoch reseeds torch/numpy/random from (seed, state,
epoch), so a run resumed from an epoch-boundary checkpoint replays exactly
the data order and augmentation of an uninterrupted run, bit for bit on CPU,
without storing RNG states.
"""
import random

import numpy as np
import torch


def epoch_seed(seed, state, epoch):
    # Distinct, reproducible stream per (run seed, IMP state, epoch); fits in 63 bits.
    return (int(seed) * 1_000_003 + int(state) * 10_007 + int(epoch)) % (2**63 - 1)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def select_device(gpu):
    """`cuda:<gpu>` when CUDA is present, else the CPU with one line saying so."""
    if torch.cuda.is_available():
        if gpu is None:
            gpu = 0
        if not 0 <= gpu < torch.cuda.device_count():
            from utils.errors import InvalidInput
            raise InvalidInput(f"--gpu {gpu}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{gpu}")
    if gpu is not None:
        print(f"--gpu {gpu}: CUDA is not available, running on the CPU")
    return torch.device("cpu")
