"""The controls a lottery ticket is judged against (Frankle & Carbin 2019;
OpenLTH's branches): random pruning, the ticket's per-layer sparsity at
random positions; random reinitialisation, the ticket's mask over fresh
weights (app.config.ControlConfig draws those).
"""
import torch

from pruner.mask import Mask


def random_mask_like(mask, seed):
    """A Mask with, in every layer, exactly as many ones as `mask` has there,
    at positions drawn uniformly without replacement (seeded: each layer from
    `seed` and its place in the mask)."""
    out = Mask()
    for i, (name, layer) in enumerate(mask.items()):
        kept = int(layer.count_nonzero())
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        flat = torch.zeros(layer.numel(), dtype=layer.dtype)
        flat[torch.randperm(layer.numel(), generator=generator)[:kept]] = 1
        out[name] = flat.view_as(layer).to(layer.device)  # drawn on the CPU: one mask whatever the device
    return out
