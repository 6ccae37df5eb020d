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


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively


def native_bf16(cpuinfo="/proc/cpuinfo"):
    """The /proc/cpuinfo flag that shows this CPU computes bf16 natively
    (AMX or AVX512-BF16: oneDNN's bf16 convolutions then run about twice as
    fast as fp32), or None (no such flag, or no /proc/cpuinfo to read:
    elsewhere bf16 is emulated and slower than fp32)."""
    try:
        with open(cpuinfo) as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None
    return next((flag for flag in BF16_FLAGS if flag in flags), None)
