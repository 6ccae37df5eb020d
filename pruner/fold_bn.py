"""Fold eval-mode BatchNorm into the convolution before it: an inference
form, for dense and structured models alike (so benchmarks compare like
with like).

BN(conv(x)) = scale * (W * x + b - mean) + beta, with scale = gamma /
sqrt(var + eps): the conv takes weight W * scale (per output channel) and
bias (b - mean) * scale + beta, and the BN becomes an identity. A zero
(pruned) output channel keeps zero weights and gets bias BN(0), what the
unfolded model computes for it. Pairs are read from the traced graph (a
conv whose only reader is a BatchNorm), so every architecture is covered
without naming its layers.
"""
import torch
import torch.fx as fx
from torch import nn


def conv_bn_pairs(model):
    """[(conv name, BN name)] where a Conv2d's output is read only by a BatchNorm2d."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1):
            pairs.append((source.target, node.target))
    return pairs


def bn_scale_shift(bn):
    """(scale, shift) per channel with BN(y) = scale * y + shift in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    return scale, shift


@torch.no_grad()
def fold_batchnorm(model, pairs=None):
    """Fold every BatchNorm that directly follows a conv into it (in place;
    the model must be in eval mode). Returns the model and the folded pairs.

    pairs: the (conv name, BN name) pairs to fold; by default those the traced
    graph shows (`conv_bn_pairs`). A slimmed model does not trace, so
    pruner.slim finds them on the model before slimming. A conv with a
    `fold_scale_shift(scale, shift)` method (a slimmed conv) folds itself; a
    pair whose conv has fewer output channels than its BN (a slimmed conv
    that scatters into the BN's full width) is left as it is."""
    if model.training:
        raise ValueError("BatchNorm folding uses running statistics: put the model in eval mode first")
    folded = []
    for conv_name, bn_name in conv_bn_pairs(model) if pairs is None else pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if hasattr(conv, "weight_mask"):
            raise ValueError(f"'{conv_name}' is still masked: make the masks permanent (strip_masks) before folding")
        if not isinstance(bn, nn.BatchNorm2d) or conv.weight.shape[0] != bn.num_features:
            continue
        scale, shift = bn_scale_shift(bn)
        if hasattr(conv, "fold_scale_shift"):
            conv.fold_scale_shift(scale, shift)
        else:
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
        folded.append((conv_name, bn_name))
    return model, folded
