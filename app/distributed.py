"""Data-parallel training under `torchrun` (PyTorch DDP).

`launch_context()` reads torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK); without it the run is a single process and nothing here is
used. Under torchrun:

- the device is `cuda:LOCAL_RANK` (NCCL) when CUDA exists, else the CPU
  (gloo); `--gpu` is ignored;
- `--batch_size` stays the global batch: each rank trains on its share of
  every batch (app.batches.epoch_order: items r, r+W, ... of each global
  batch of the epoch's permutation, every image once), so the learning-rate
  schedule and the optimisation match a single-process run;
- evaluation splits the data the same way and sums the counts, after every
  rank has taken rank 0's BatchNorm statistics, so every rank sees the
  accuracy of the model rank 0 saves;
- masks are computed on rank 0 and broadcast, so every rank holds the same;
- only rank 0 writes files and prints; the others wait at barriers.
"""
import hashlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pruner.mask import Mask


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        dist.barrier()

    @property
    def local_world_size(self):
        """Ranks on this node (torchrun's LOCAL_WORLD_SIZE)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))

    def sum_tensor(self, t):
        """`t` summed over all ranks (a new tensor; no host sync of its own)."""
        t = t.clone()
        dist.all_reduce(t)
        return t

    def broadcast_buffers(self, model):
        """Rank 0's buffers (BatchNorm statistics) on every rank: each rank's
        own last steps moved its copy, and what is evaluated must be the
        model rank 0 saves."""
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def broadcast_mask(self, mask):
        """Rank 0's mask on every rank (masks are computed once)."""
        out = Mask()
        for name in sorted(mask):
            t = mask[name].to(self.device, torch.float32).contiguous()
            dist.broadcast(t, src=0)
            out[name] = t.cpu()
        return Mask({name: out[name] for name in mask})

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_rank():
    """This process's rank under torchrun (0 without it), known before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def launch_context():
    """A DistContext under torchrun with WORLD_SIZE > 1, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device(f"cuda:{local_rank}"), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # one log per job; errors still reach stderr
    return DistContext(rank, world, local_rank, device)


def mask_digest(mask):
    """A short fingerprint of a mask, to check that ranks agree."""
    h = hashlib.sha256()
    for name in sorted(mask):
        h.update(name.encode())
        h.update(mask[name].to(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]
