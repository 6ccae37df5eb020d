"""Putting masks on models and taking them off.

Masks use torch.nn.utils.prune's reparametrisation (`weight_orig` parameter,
`weight_mask` buffer, weight = orig * mask recomputed on each forward), so
the state dict has the original code's layout and gradients never revive a
pruned weight.
"""
import torch
from torch import nn
from torch.nn.utils import prune

from pruner.mask import Mask
from utils.checkpoint import plain_weights
from utils.errors import InvalidInput


def conv_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prunable_layers(model, include_stem=False):
    """Names of the convolutions IMP prunes: all but the stem (unless
    `include_stem`); the classifier is linear, so never."""
    names = list(conv_layers(model))
    return names if include_stem else names[1:]


def full_mask(model, include_stem=False):
    modules = dict(model.named_modules())
    return Mask({n: torch.ones_like(modules[n].weight, dtype=torch.float32, device="cpu")
                 for n in prunable_layers(model, include_stem)})


def masked_weight(module):
    """orig * mask for a masked layer, else its weight. Read this, not
    `module.weight`: prune recomputes that attribute only on forward, so it is
    stale after load_state_dict or an optimizer step."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def refresh_masked_weights(model):
    """Recompute every masked layer's `weight` attribute from orig * mask."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
                module.weight = module.weight_orig * module.weight_mask


def apply_mask(model, mask):
    """Install `mask` (validated first); layers already masked get the new mask."""
    mask.validate(model)
    modules = dict(model.named_modules())
    for name, m in mask.items():
        module = modules[name]
        m = m.to(device=module.weight.device, dtype=module.weight.dtype)
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            module.weight_mask.copy_(m)
            module.weight = module.weight_orig * module.weight_mask
        else:
            prune.custom_from_mask(module, "weight", m)


def current_mask(model, include_stem=False):
    """The model's mask over its prunable layers (all ones where unmasked)."""
    mask = full_mask(model, include_stem)
    mask.update(Mask.from_model(model))
    return mask


def load_weights(model, state_dict):
    """Load a state dict that may carry masks: masks are installed first, so
    keys line up whichever layout the file has."""
    masks = Mask.from_state_dict(state_dict)
    if masks:
        apply_mask(model, masks)
        model.load_state_dict(state_dict)
        refresh_masked_weights(model)
    else:
        load_plain_weights(model, state_dict)


def load_plain_weights(model, plain):
    """Load a plain state dict (`X.weight`) into a model that may be masked
    (`X.weight_orig`): the mask is kept, the weights replaced."""
    target = model.state_dict()
    check_compatible(model, plain, "the state dict")
    new_state = {}
    for key, value in target.items():
        if key.endswith("_orig"):
            new_state[key] = plain[key[:-5]]
        elif key.endswith("_mask"):
            new_state[key] = value
        else:
            new_state[key] = plain[key]
    model.load_state_dict(new_state)
    refresh_masked_weights(model)


def check_compatible(model, plain, source, hint=""):
    """InvalidInput unless `plain` (a plain state dict) has exactly the model's
    parameter and buffer names and shapes; `source` names where it came from
    ("--checkpoint 'x'"), `hint` ends the message."""
    expected = {k: tuple(v.shape) for k, v in plain_weights(model.state_dict()).items()}
    given = {k: tuple(v.shape) for k, v in plain_weights(plain).items()}
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    if missing or extra or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                  else f"{wrong[0]} has shape {given[wrong[0]]}, expected {expected[wrong[0]]}")
        raise InvalidInput(f"{source} holds weights that do not fit this architecture ({detail}; "
                        f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} misshapen){hint}")


def effective_weights(model):
    """Plain state dict with masks multiplied in (what the network computes with)."""
    return {k: v.detach().clone() for k, v in plain_weights(model.state_dict()).items()}


def strip_masks(model):
    """Make masks permanent: weight = orig * mask as a plain parameter."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model
