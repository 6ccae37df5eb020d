"""The life of one run, shared by IMP and retraining: hold --save_dir for
this run alone (an OS lock), refuse a --save_dir that already holds a run
unless --resume, find the checkpoint to resume,
build device, data and model, prepare the save folder, compute masks once
(rank 0) and give every rank the same, write the summary and plots, and
close the process group.
"""
import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch

from app.datasets import load_dataset, model_for
from app.distributed import DistContext, launch_context, launch_rank, mask_digest
from app.report import plot_states, write_summary
from utils.checkpoint import TEMPORARY_PREFIX, TEMPORARY_SUFFIX, load_file
from utils.errors import InvalidInput
from utils.run_lock import run_folder_lock
from utils.runtime import seed_everything, select_device

_HELD = set()  # real paths of the run folders this process holds


@contextlib.contextmanager
def owned_save_dir(train):
    """--save_dir belongs to this run until the block ends (rank 0 holds it
    under torchrun; a block inside another of the same folder adds nothing):
    another live run there is refused in one line, before anything is written."""
    key = os.path.realpath(train.save_dir)
    if launch_rank() != 0 or key in _HELD:
        yield
        return
    with run_folder_lock(train.save_dir):
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)


RESUME_KEYS = ("state", "epoch", "state_dict", "optimizer", "scheduler", "result", "best_sa", "init_weight")
WEIGHT_KEYS = ("state_dict", "optimizer", "scheduler", "init_weight")  # what a checkpoint without --save_model lacks


def resume_checkpoint(train, existing, name_hint):
    """The checkpoint to continue, or None for a fresh run.

    `existing` is the run's own checkpoint found in --save_dir (or None).
    Without --resume an existing run is refused (nothing is overwritten);
    with it, --checkpoint or `existing` is loaded and must be a training
    checkpoint of this tool."""
    if not train.resume:
        if existing:
            raise InvalidInput(f"--save_dir '{train.save_dir}' already holds a run ({os.path.basename(existing)}); "
                               "pass --resume to continue it or choose another --save_dir")
        return None
    path = train.checkpoint or existing
    if path is None:
        raise InvalidInput(f"--resume: no --checkpoint given and no {name_hint} in --save_dir '{train.save_dir}'")
    ckpt = load_file(path, "--resume checkpoint", train.trust_checkpoint)
    missing = [k for k in RESUME_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing and all(k in WEIGHT_KEYS for k in missing):
        raise InvalidInput(f"--resume checkpoint '{path}' holds results but no weights (a retraining run saved "
                           "without --save_model): there is nothing to continue from; start again with --save_model")
    if missing:
        raise InvalidInput(f"--resume checkpoint '{path}' lacks {', '.join(missing)}: "
                           "not a training checkpoint of this tool")
    print(f"resuming from {path} (state {ckpt['state']}, {ckpt['epoch']} epoch(s) done)", flush=True)
    return ckpt


@dataclass
class Run:
    """What a run trains with: its config, device, data, model and, under
    torchrun, the process group."""
    train: Any
    device: torch.device
    data: Any
    model: torch.nn.Module
    dist_ctx: Optional[DistContext]

    @property
    def is_main(self):
        return self.dist_ctx is None or self.dist_ctx.is_main

    def barrier(self):
        if self.dist_ctx is not None:
            self.dist_ctx.barrier()

    def shared_mask(self, compute, fallback):
        """compute() on rank 0, its mask on every rank (other ranks' own
        result is `fallback`, a (mask, report) pair); returns (mask, report)."""
        mask, report = compute() if self.is_main else fallback
        if self.dist_ctx is not None:
            mask = self.dist_ctx.broadcast_mask(mask)
        return mask, report

    def log_mask(self, what, mask):
        """Under torchrun, each rank's mask fingerprint on stderr, for the logs (and tests) to compare."""
        if self.dist_ctx is not None:
            sys.stderr.write(f"rank {self.dist_ctx.rank}: {what} mask {mask_digest(mask)}\n")

    def prepare_save_dir(self, states=1):
        """Rank 0 makes --save_dir and checks it (room for the checkpoints of
        the `states` training states still to run: every state keeps its
        two); all ranks wait."""
        if self.is_main:
            prepare_save_dir(self.train.save_dir, needed_bytes=states * checkpoint_bytes(self.model), states=states)
        self.barrier()

    def write_results(self, summary, title):
        if self.is_main:
            write_summary(self.train.save_dir, summary)
            plot_states(self.train.save_dir, summary["states"], title)

    def close(self):
        if self.dist_ctx is not None:
            self.dist_ctx.barrier()
            self.dist_ctx.close()


def open_run(train):
    """Device, data splits and the model (its initial weights depend only on
    --seed; channels-last on CUDA), under torchrun one rank of the group."""
    dist_ctx = launch_context()
    if dist_ctx is None:
        device = select_device(train.gpu)
        where = str(device)
    else:
        device = dist_ctx.device
        where = f"{device} x {dist_ctx.world_size} ranks (torchrun{'; --gpu ignored' if train.gpu is not None else ''})"
    print(f"device: {where} | torch {torch.__version__} | dataset {train.dataset} | arch {train.arch}", flush=True)
    data = load_data(train, dist_ctx)
    seed_everything(train.seed)
    model = model_for(train.arch, data.spec).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Run(train, device, data, model, dist_ctx)


def load_data(train, dist_ctx):
    """The dataset; with --download under torchrun rank 0 fetches it while the other ranks wait."""
    fetcher = dist_ctx is None or dist_ctx.is_main
    if train.download and not fetcher:
        dist_ctx.barrier()
    data = load_dataset(train.dataset, train.data, download=train.download and fetcher, split_file=train.split_file)
    if train.download and dist_ctx is not None and fetcher:
        dist_ctx.barrier()
    return data


def checkpoint_bytes(model):
    """Disk one training state needs: two checkpoints (latest and best), each
    with weights, masks, momentum and the rewind point (~4x the parameters)."""
    return 2 * 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def prepare_save_dir(path, needed_bytes=0, states=1):
    """Create --save_dir and prove it is writable, with room for
    `needed_bytes` (the checkpoints of `states` states), before any training;
    remove temporaries of a save that was killed mid-write."""
    try:
        os.makedirs(path, exist_ok=True)
        free = shutil.disk_usage(path).free
        if free < needed_bytes:
            raise InvalidInput(f"--save_dir '{path}' has {free / 2**20:.0f} MiB free; the checkpoints of the "
                               f"{states} state(s) this run will train need about {needed_bytes / 2**20:.0f} MiB")
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
        for name in os.listdir(path):
            if name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX):
                os.unlink(os.path.join(path, name))
    except OSError as err:
        raise InvalidInput(f"--save_dir '{path}' is not writable: {err.strerror}") from None
