"""Slimming: export a channel-wise (refilled) ticket as a physically smaller
model whose eval-mode outputs equal the masked model's.

A removed output channel of a masked conv is all zeros; after its BatchNorm
it is the constant b = beta - gamma * mean / sqrt(var + eps), after ReLU
relu(b). So:

- where a conv's output reaches exactly one next conv through BN -> ReLU
  (-> max-pool), the "chain" is cut: the conv computes only its kept
  channels, its BN keeps only their statistics, and the next conv reads only
  those input channels; what the removed inputs contributed is a map that
  depends on the spatial size alone (the constant relu(b) convolved with the
  removed weights, zero padding included) and is cached per size;
- in a ResNet block, the convs that write the residual sum (the last conv of
  the branch and the shortcut's conv) compute only their kept channels, their
  BNs only those channels' statistics; the block starts its sum from the
  shortcut plus the constants BN gives the removed channels and adds the kept
  channels in place (`SlimResidualBlock`), so nothing runs at full width but
  the sum and its ReLU, as in the dense block;
- elsewhere a consumer that needs the full width (a depthwise conv, the
  classifier) gets the kept channels scattered into a zero tensor.

The chains and residual sums are what the architecture declares
(models.structure: ResNet basic/bottleneck blocks, MobileNet
depthwise-separable blocks, VGG's conv sequence); nothing else is cut.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from models.structure import conv_chains, residual_blocks
from pruner.fold_bn import conv_bn_pairs, fold_batchnorm
from pruner.masking import refresh_masked_weights, strip_masks
from pruner.refill import is_channel_wise, kept_rows
from utils.errors import InvalidInput
from utils.layout import index_add_channels, is_channels_last, memory_format_of


class SlimConv(nn.Module):
    """A conv over a subset of input channels and of output channels.

    in_index:   channels of the incoming tensor to read (None: all it has);
    const_in:   (weight on removed inputs, their constant values) when the
                incoming tensor already lacks them, else None;
    out_index / out_channels: scatter the outputs to this full width (None: don't,
                or every channel is kept).
    """

    def __init__(self, conv, out_keep, in_keep, in_gather, const_in, scatter):
        super().__init__()
        w = conv.weight.detach()
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        w = w[out_keep]
        if not depthwise:
            w = w[:, in_keep]
        self.groups = len(out_keep) if depthwise else conv.groups
        self.weight = nn.Parameter(w.clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach()[out_keep].clone())
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        whole_input = in_gather is not None and torch.equal(in_gather, torch.arange(conv.in_channels))
        self.register_buffer("in_index", in_gather.clone() if in_gather is not None and not whole_input else None)
        # a layer that keeps every output channel (rounding up to c_out does that) has nothing to scatter:
        # a zero tensor + index_copy_ would only copy its output (17.7 ms per ResNet-18 pass at 50%, round 16)
        self.register_buffer("out_index", out_keep.clone() if scatter and len(out_keep) < conv.out_channels else None)
        self.out_channels = conv.out_channels
        if const_in is not None:
            removed_weight, values = const_in
            self.register_buffer("removed_weight", removed_weight[out_keep].clone())
            self.register_buffer("removed_value", values.clone())
        else:
            self.removed_weight = None
        self._const_maps = {}

    def _const_map(self, x):
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype)
        if key in self._const_maps:
            return self._const_maps[key]
        image = self.removed_value.to(x.dtype).view(1, -1, 1, 1).expand(1, -1, *x.shape[-2:])
        const = F.conv2d(image, self.removed_weight.to(x.dtype), None, self.stride, self.padding, self.dilation)
        if not torch.compiler.is_compiling():  # a traced graph computes (and folds) it itself; cache real tensors only
            self._const_maps[key] = const
        return const

    def forward(self, x):
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.removed_weight is not None:
            y.add_(self._const_map(x))
        if self.out_index is not None:
            y = self._scatter(y)
        return y

    @torch.no_grad()
    def fold_scale_shift(self, scale, shift):
        """Take an eval-mode BatchNorm over this conv's outputs into it:
        outputs become scale * y + shift, the removed inputs' constant map
        included (pruner.fold_bn)."""
        bias = self.bias if self.bias is not None else torch.zeros_like(scale)
        self.weight.copy_(self.weight * scale.view(-1, 1, 1, 1))
        self.bias = nn.Parameter(bias * scale + shift)
        if self.removed_weight is not None:
            self.removed_weight.mul_(scale.view(-1, 1, 1, 1))
        self._const_maps.clear()

    def _scatter(self, y):
        """Kept channels into a zero tensor of full width, in y's memory format."""
        n, _, h, w = y.shape
        if is_channels_last(y):
            full = y.new_zeros(n, h, w, self.out_channels)  # NHWC storage: channels are the last dim
            full.index_copy_(3, self.out_index, y.permute(0, 2, 3, 1))
            return full.permute(0, 3, 1, 2)
        return y.new_zeros(n, self.out_channels, h, w).index_copy_(1, self.out_index, y)


def _slice_bn(bn, keep):
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        new.running_mean.copy_(bn.running_mean[keep])
        new.running_var.copy_(bn.running_var[keep])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _bn_of_zero(bn):
    """BN(0) per channel in eval mode: what a removed (all-zero) channel becomes."""
    with torch.no_grad():
        return bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)


def _bn_constant(bn, removed):
    """relu(BN(0)) for the removed channels: what the next layer sees of them."""
    return _bn_of_zero(bn)[removed].clamp(min=0)


class SlimResidualBlock(nn.Module):
    """A ResNet block (basic or bottleneck, same attribute names) whose
    residual writers compute only their kept channels.

    out = relu(shortcut(x) + constants + kept channels of the branch added in
    place); `constants` holds what BN makes of the removed (all-zero) channels
    of both writers. Without a downsample the sum is built in x itself, as
    nn.ReLU(inplace=True) overwrites its input: inside the network a block's
    input is the previous block's (or the stem's) fresh output, read by
    nothing else once the branch has run, and a copy costs as much as the
    whole residual sum.
    """

    def __init__(self, block):
        super().__init__()
        self.depth = block.residual_depth  # convs in the branch
        for i in range(1, self.depth + 1):
            setattr(self, f"conv{i}", getattr(block, f"conv{i}"))
            setattr(self, f"bn{i}", getattr(block, f"bn{i}"))
        last = f"{self.depth}"
        constants, last_index = self._writer(f"conv{last}", f"bn{last}")
        self.downsample, shortcut_index = block.downsample, None
        if block.downsample is not None:
            ds_constants, shortcut_index = self._writer("0", "1", block.downsample)
            constants = constants + ds_constants
        self.out_channels = constants.numel()
        self.register_buffer("last_index", last_index)
        self.register_buffer("shortcut_index", shortcut_index)
        self.register_buffer("constants", constants.view(1, -1, 1, 1) if bool(torch.any(constants != 0)) else None)

    def _writer(self, conv_name, bn_name, parent=None):
        """Stop a residual writer's scatter and slice its BN to the kept
        channels; returns (BN(0) on removed channels, 0 on kept; kept indices)."""
        parent = self if parent is None else parent
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if not isinstance(conv, SlimConv) or conv.out_index is None:
            return torch.zeros(bn.num_features), None
        keep = conv.out_index
        constants = _bn_of_zero(bn).detach().clone()
        constants[keep] = 0
        conv.out_index = None
        setattr(parent, bn_name, _slice_bn(bn, keep))
        return constants, keep

    def forward(self, x):
        h = x
        for i in range(1, self.depth):
            h = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(h)).relu_()
        y = getattr(self, f"bn{self.depth}")(getattr(self, f"conv{self.depth}")(h))
        if self.downsample is None:
            out = x.add_(self.constants) if self.constants is not None else x
        elif self.shortcut_index is None:
            out = self.downsample(x)
            if self.constants is not None:
                out.add_(self.constants)
        else:
            s = self.downsample(x)
            n, _, h, w = s.shape
            out = torch.empty((n, self.out_channels, h, w), dtype=s.dtype, device=s.device,
                              memory_format=memory_format_of(s))
            if self.constants is not None:
                out.copy_(self.constants.expand_as(out))
            else:
                out.zero_()
            index_add_channels(out, self.shortcut_index, s)
        return index_add_channels(out, self.last_index, y).relu_()


def slim(model, mask=None, fold_bn=False):
    """A physically slimmed copy of `model` (masked with a channel-wise mask,
    or with `mask` given). Raises InvalidInput for a mask that is not channel-wise.
    fold_bn: also fold each BatchNorm that follows a conv into it (an
    inference form; pruner.fold_bn), as a benchmark does to the dense model."""
    refresh_masked_weights(model)  # prune's weight = orig * mask may be a graph node; deepcopy needs leaves
    model = copy.deepcopy(model).cpu().eval()
    if mask is not None:
        from pruner.masking import apply_mask
        apply_mask(model, mask)
    bn_pairs = conv_bn_pairs(model) if fold_bn else None  # traced now: the slimmed model does not trace
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    masks = {}
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d) and hasattr(module, "weight_mask"):
            if not is_channel_wise(module.weight_mask):
                raise InvalidInput(f"layer '{name}' is not channel-wise: slimming needs a refilled mask")
            masks[name] = module.weight_mask
    strip_masks(model)
    plans = {}  # conv name -> dict(out_keep, in_keep, in_gather, const_in, scatter)

    def plan(name):
        conv = modules[name]
        keep = kept_rows(masks[name]) if name in masks else torch.arange(conv.out_channels)
        return plans.setdefault(name, {"out_keep": keep, "in_keep": torch.arange(conv.weight.shape[1]),
                                       "in_gather": None, "const_in": None, "scatter": True})

    for parent, prod, bn_name, cons in conv_chains(model):
        pname, cname = names[getattr(parent, prod)], names[getattr(parent, cons)]
        if pname not in masks:
            continue
        keep = plan(pname)["out_keep"]
        if len(keep) == modules[pname].out_channels:
            continue
        removed = torch.tensor(sorted(set(range(modules[pname].out_channels)) - set(keep.tolist())))
        bn = getattr(parent, bn_name)
        consumer = modules[cname]
        if consumer.groups != 1:
            continue  # a grouped consumer keeps full width (its producer scatters)
        plans[pname]["scatter"] = False
        cplan = plan(cname)
        cplan["in_keep"] = keep
        values = _bn_constant(bn, removed)
        if bool(torch.any(values != 0)):  # removed channels that ReLU zeroes contribute nothing
            cplan["const_in"] = (consumer.weight.detach()[:, removed].clone(), values)
        setattr(parent, bn_name, _slice_bn(bn, keep))
    for name, conv in modules.items():
        if not isinstance(conv, nn.Conv2d) or (name not in masks and name not in plans):
            continue
        p = plan(name)
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        if depthwise:
            p["in_gather"] = p["out_keep"]  # depthwise: output j reads input j
        elif conv.groups != 1:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, SlimConv(conv, p["out_keep"], p["in_keep"], p["in_gather"], p["const_in"], p["scatter"]))
    for name, block in residual_blocks(model):
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, SlimResidualBlock(block))
    if fold_bn:
        fold_batchnorm(model, bn_pairs)
    return model
