"""Global magnitude pruning, the step of IMP.

Prunes `rate` of the weights that are still unpruned, across all prunable
layers at once, by the absolute value of the trained (masked) weights.
Ties break by position (stable sort), so the result is deterministic.
"""
import torch

from pruner.mask import Mask
from pruner.masking import current_mask, masked_weight
from utils.errors import InvalidInput


def _keep_all_but_smallest(scores, count):
    """0 for the `count` smallest scores, ties broken towards the lower index
    (what a stable sort gives), 1 elsewhere. A selection, not a sort: 0.7 s
    instead of 4.3 s for ResNet-50's 23M weights on 2 cores."""
    keep = torch.ones_like(scores)
    if count == 0:
        return keep
    threshold = torch.kthvalue(scores, count).values
    below = scores < threshold
    keep[below] = 0.0
    keep[torch.nonzero(scores == threshold).flatten()[: count - int(below.sum())]] = 0.0
    return keep


def global_magnitude_prune(model, rate, include_stem=False):
    """The next IMP mask: the current one minus the `rate` fraction of its
    remaining weights with the smallest |weight| (rounded to whole weights)."""
    if not 0.0 < rate < 1.0:
        raise InvalidInput(f"pruning rate must be in (0, 1), got {rate}")
    mask = current_mask(model, include_stem)
    modules = dict(model.named_modules())
    names = list(mask)
    scores, flat_masks = [], []
    for name in names:
        w = masked_weight(modules[name]).detach().float().cpu().flatten()
        m = mask[name].flatten()
        scores.append(torch.where(m > 0, w.abs(), torch.full_like(w, -1.0)))  # pruned sort first
        flat_masks.append(m)
    scores = torch.cat(scores)
    already_pruned = int((torch.cat(flat_masks) == 0).sum())
    to_prune = int(round(rate * (scores.numel() - already_pruned)))
    keep = _keep_all_but_smallest(scores, already_pruned + to_prune)
    new_mask, offset = Mask(), 0
    for name in names:
        n = mask[name].numel()
        new_mask[name] = keep[offset: offset + n].view_as(mask[name]).clone()
        offset += n
    return new_mask
