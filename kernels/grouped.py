"""A regrouped ticket as a deployable model, built from its masks alone.

A channel-unit regroup leaves every pruned convolution's mask a union of
blocks "these output channels x these whole input channels", each output
channel in one block. Grouping the output channels by the set of input
channels they keep recovers the blocks exactly (blocks that share their
input channels merge, which computes the same). Such a layer becomes a
`GroupedBlockConv` (gather, one grouped convolution, gather): standard
operators, so the model exports to ONNX and compiles with torch.compile.

A layer whose mask is not of that form (regroup found no block and kept the
unstructured mask, or the weight unit) keeps a dense convolution with the
masked weight: correct, but it does not exploit the sparsity.
"""
import copy

import torch
from torch import nn

from kernels.regrouped import GroupedBlockConv, RegroupedConv2d
from pruner.masking import refresh_masked_weights, strip_masks
from pruner.regroup import parts_for


def channel_blocks(layer_mask, cn=8, b2=16):
    """[(rows, input channels)] of a mask [c_out, c_in, kh, kw] that is a
    union of whole-input-channel blocks with at most as many distinct
    input-channel sets as regroup makes parts (`cn`, 'auto' too), else None
    (an unstructured 1x1 mask is whole channels too, but has far more sets)."""
    c_out, c_in = layer_mask.shape[:2]
    taps = layer_mask.reshape(c_out, c_in, -1) != 0
    grid = taps.any(2)
    if not bool(torch.equal(taps, grid.unsqueeze(2).expand_as(taps))):
        return None  # some input channel keeps only part of its taps
    live = torch.nonzero(grid.any(1)).flatten()
    if len(live) == 0:
        return None
    patterns, group_of = torch.unique(grid[live], dim=0, return_inverse=True)
    if len(patterns) > parts_for(c_out, cn, b2):  # the most parts regroup makes of c_out rows
        return None
    return [(live[group_of == g], torch.nonzero(patterns[g]).flatten()) for g in range(len(patterns))]


def grouped_model(model, unit="channel", cn=8, b2=16):
    """A copy of a masked (regrouped) model in eval mode on the CPU, masks made
    permanent, with every channel-unit block layer as a GroupedBlockConv
    (RegroupedConv2d layers too: channel unit grouped, weight unit dense).
    Returns (model, {layer: "grouped convolution, G groups" | "masked dense convolution"})."""
    refresh_masked_weights(model)
    model = copy.deepcopy(model).cpu().eval()
    masks = {name: m.weight_mask.detach().clone() for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and hasattr(m, "weight_mask")}
    strip_masks(model)
    forms = {}
    for name, module in list(model.named_modules()):  # layers already regrouped (kernels.regrouped.regroup_model)
        if isinstance(module, RegroupedConv2d):
            if module.unit == "channel":
                replacement, forms[name] = GroupedBlockConv.from_regrouped(module), "grouped convolution"
            else:
                replacement, forms[name] = _dense_conv(module), "masked dense convolution"
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, replacement)
    for name, mask in masks.items():
        conv = model.get_submodule(name)
        blocks = channel_blocks(mask, cn, b2) if unit == "channel" and conv.groups == 1 else None
        if blocks is None:
            forms[name] = "masked dense convolution"
            continue
        weight = conv.weight.detach()
        grouped = GroupedBlockConv([(rows, cols, weight[rows][:, cols]) for rows, cols in blocks], conv.out_channels,
                                   conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, grouped)
        forms[name] = f"grouped convolution, {grouped.groups} groups"
    return model, forms


def _dense_conv(regrouped):
    """An nn.Conv2d holding a RegroupedConv2d's weight (zeros outside its blocks)."""
    conv = nn.Conv2d(regrouped.in_channels, regrouped.out_channels, regrouped.kernel_size, regrouped.stride,
                     regrouped.padding, regrouped.dilation, bias=regrouped.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(regrouped.dense_weight())
        if regrouped.bias is not None:
            conv.bias.copy_(regrouped.bias)
    return conv
