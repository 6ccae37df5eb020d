"""A channel-unit regrouped ticket with its channel permutations folded away,
for inference on the CPU (and torch.compile).

A regrouped layer computes one grouped convolution over its blocks (see
kernels.regrouped.grouped_plan); its natural output is in "slot" order:
group after group, each padded to the same row count. The standalone form
gathers the input channels before and the output channels after it. Here:

- BatchNorm is folded into every conv first (pruner.fold_bn), so a slot's
  output is final up to the ReLU; a row outside every block gets a slot of
  its own with zero weights, whose bias is what BN makes of a zero channel;
- where a layer's output reaches one next conv through BN -> ReLU (-> max-pool)
  (models.structure.conv_chains: inside a ResNet branch, between VGG's convs),
  the output stays in slot order and the next conv reads slots instead:
  its input gather is re-indexed (a plain conv's weight columns are moved
  instead, and it needs no gather at all, when the slots are no more than
  its input channels: padded slots would add FLOPs to it, 0.21 MFLOPs net on
  res20s's layer3.1.conv1 at 16x16, so a wider producer gathers back);
- where the next layer is a plain conv (a layer kept dense) and the
  consumer is regrouped, the consumer's input gather is folded into the
  producer (it computes the gathered channels directly) when that is no
  more channels than it had;
- at a residual sum the channel order is fixed: the last conv of the branch
  adds its slots into the shortcut by index (one pass, no separate gather);
- everything else (a shortcut conv, a conv before a depthwise conv or the
  classifier) gathers its output back into the layer's order.

Input gathers of regrouped layers remain where blocks share input channels
(a grouped convolution needs each group's channels contiguous).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from kernels.regrouped import RegroupedConv2d, gather_buffer, gather_channels, layer_inputs, select_channels
from models.structure import conv_chains, residual_blocks
from pruner.fold_bn import fold_batchnorm
from kernels.grouped import channel_blocks
from pruner.masking import refresh_masked_weights, strip_masks
from utils.layout import index_add_channels, memory_format_of
from utils.timing import alternating_medians

MORE_FLOPS_MARGIN = 0.10  # a grouped form that pads to more FLOPs than dense must beat it by this share of dense time


def grouped_wins(dense_s, grouped_s, flops_ratio):
    """The per-layer choice from the layer's two times (seconds) and its
    dense / grouped FLOPs: grouped when it is no slower, or, where its padded
    groups execute more FLOPs than the dense convolution (flops_ratio < 1),
    only when it is faster by MORE_FLOPS_MARGIN (10%, this shared machine's
    run-to-run noise) — a tie inside the noise must not pick the larger form."""
    if flops_ratio < 1:
        return grouped_s <= (1 - MORE_FLOPS_MARGIN) * dense_s
    return grouped_s <= dense_s


def vector_rows():
    """Output channels oneDNN computes at once on this CPU (fp32 lanes: 16 with
    AVX-512, else 8): a grouped convolution with rows per group a multiple of
    it runs faster despite the padding (15 groups of 35 rows: 14.8 ms, of 40
    rows: 11.8 ms, on an AVX2 EPYC, 2 threads)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def slot_plan(blocks, out_channels, row_multiple=1):
    """Slots of a channel-unit regrouped layer from its blocks [(rows, cols)]:
    blocks with the same columns merge into one group; every group gets R
    slots (its rows, then free slots), and every row outside the blocks takes
    a free slot (R grows when there are too few); R is rounded up to a
    multiple of `row_multiple`. Returns (groups as [(rows, cols)], R,
    slot_rows [groups * R]: the layer's row in each slot, -1 for padding).
    Unlike kernels.regrouped.grouped_plan, whose rows outside the blocks all
    read one zero row (its bias is added after the gather), each gets a slot:
    with BatchNorm folded each has its own bias, and the next layer reads it."""
    merged = {}
    for rows, cols in blocks:
        merged.setdefault(tuple(torch.as_tensor(cols).tolist()), []).append(torch.as_tensor(rows).long())
    groups = [(torch.cat(rows), torch.tensor(cols, dtype=torch.long)) for cols, rows in merged.items()]
    covered = torch.zeros(out_channels, dtype=torch.bool)
    for rows, _ in groups:
        covered[rows] = True
    dead = torch.nonzero(~covered).flatten()
    per_group = max(len(rows) for rows, _ in groups)
    free = sum(per_group - len(rows) for rows, _ in groups)
    if len(dead) > free:
        per_group += -(-(len(dead) - free) // len(groups))  # ceil: the rest spread over the groups
    per_group = -(-per_group // row_multiple) * row_multiple
    slot_rows = torch.full((len(groups) * per_group,), -1, dtype=torch.long)
    for g, (rows, _) in enumerate(groups):
        slot_rows[g * per_group: g * per_group + len(rows)] = rows
    slot_rows[torch.nonzero(slot_rows < 0).flatten()[:len(dead)]] = dead
    return groups, per_group, slot_rows


class PermutedBlockConv(nn.Module):
    """One grouped convolution over a regrouped layer's blocks, with an
    optional input gather (`in_index`, None: the input already arrives in
    group order) and an optional output gather into the layer's channel
    order (`out_index`, None: the output stays in slot order, `slot_rows`)."""

    def __init__(self, weight, bias, groups, in_index, slot_rows, out_channels, stride, padding, dilation):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.groups, self.out_channels = groups, out_channels
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.register_buffer("in_index", in_index)
        self.register_buffer("slot_rows", slot_rows)
        source = torch.empty(out_channels, dtype=torch.long)
        live = slot_rows >= 0
        source[slot_rows[live]] = torch.nonzero(live).flatten()
        self.register_buffer("out_index", source)

    @classmethod
    def from_conv(cls, conv, blocks, row_multiple=1):
        """From a plain nn.Conv2d whose weight is zero outside `blocks`
        (channel unit: [(rows, input channels)]); its bias (folded BN) too."""
        groups, per_group, slot_rows = slot_plan(blocks, conv.out_channels, row_multiple)
        width = max(len(cols) for _, cols in groups)
        kh, kw = conv.kernel_size
        weight = conv.weight.new_zeros(len(groups) * per_group, width, kh, kw)
        gather = []
        for g, (rows, cols) in enumerate(groups):
            weight[g * per_group: g * per_group + len(rows), :len(cols)] = conv.weight.detach()[rows][:, cols]
            gather.append(torch.cat([cols, cols[:1].repeat(width - len(cols))]))  # pads meet zero weights
        bias = None
        if conv.bias is not None:
            bias = conv.bias.detach()[slot_rows.clamp(min=0)] * (slot_rows >= 0)
        return cls(weight.contiguous(memory_format=torch.channels_last), bias, len(groups), torch.cat(gather),
                   slot_rows, conv.out_channels, conv.stride, conv.padding, conv.dilation)

    @property
    def slots(self):
        return self.weight.shape[0]

    def forward(self, x):
        stride = self.stride
        if self.in_index is not None:
            if self.weight.shape[-2:] == (1, 1) and self.padding == (0, 0) and stride != (1, 1):
                fmt = memory_format_of(x)  # a strided 1x1 reads only these pixels
                x, stride = x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=fmt), (1, 1)
            if torch.compiler.is_compiling():
                x = gather_channels(x, self.in_index)
            else:
                x = select_channels(x, self.in_index, gather_buffer(self, x, len(self.in_index), (self.weight,)))
        y = F.conv2d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype), stride,
                     self.padding, self.dilation, self.groups)
        if self.out_index is None:
            return y
        return gather_channels(y, self.out_index) if torch.compiler.is_compiling() else select_channels(y, self.out_index)


class PermutedResidualBlock(nn.Module):
    """A ResNet block (basic or bottleneck; BN folded) whose last branch conv
    leaves its output in slot order: the sum adds the slots into the
    shortcut by index (padding slots are zero and go to channel 0), in
    place: the shortcut is the block's input (read by nothing else once the
    branch has run, as nn.ReLU(inplace=True) already assumes) or the
    downsample's fresh output. Under torch.compile the slots are gathered
    and added instead: inductor's scatter-add loops are ~4x slower than the
    eager index_add_, its gathers about as fast."""

    def __init__(self, block):
        super().__init__()
        self.depth = block.residual_depth
        self.convs = nn.ModuleList(getattr(block, f"conv{i}") for i in range(1, self.depth + 1))
        self.downsample = block.downsample
        last = self.convs[-1]
        self.register_buffer("add_index", None)  # slot -> channel
        self.register_buffer("source", None)  # channel -> slot
        if isinstance(last, PermutedBlockConv) and last.out_index is not None:
            self.source, last.out_index = last.out_index, None
            self.add_index = last.slot_rows.clamp(min=0)

    def forward(self, x):
        h = x
        for conv in self.convs[:-1]:
            h = conv(h).relu_()
        y = self.convs[-1](h)
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.add_index is not None and torch.compiler.is_compiling():
            return (shortcut + y.index_select(1, self.source)).relu_()
        return index_add_channels(shortcut, self.add_index, y).relu_()


def _set(model, name, module):
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


@torch.no_grad()
def _fold_chain(model, producer_name, consumer_name):
    """Leave the producer's output in slot order (or, for a plain producer,
    compute the consumer's gathered input directly); returns True if folded."""
    producer, consumer = model.get_submodule(producer_name), model.get_submodule(consumer_name)
    if isinstance(producer, PermutedBlockConv):
        if isinstance(consumer, PermutedBlockConv):
            consumer.in_index = producer.out_index[consumer.in_index]  # out_index: layer channel -> its slot
            if torch.equal(consumer.in_index, torch.arange(producer.slots)):
                consumer.in_index = None
        elif isinstance(consumer, nn.Conv2d) and consumer.groups == 1 and producer.slots <= consumer.in_channels:
            # a plain consumer reading padded slots would run more FLOPs than it saves a gather: only when no wider
            weight = consumer.weight.new_zeros(consumer.out_channels, producer.slots, *consumer.kernel_size)
            live = producer.slot_rows >= 0
            weight[:, live] = consumer.weight[:, producer.slot_rows[live]]
            consumer.weight = nn.Parameter(weight.contiguous(memory_format=memory_format_of(consumer.weight)))
            consumer.in_channels = producer.slots
        else:
            return False
        producer.out_index = None
        return True
    if (isinstance(producer, nn.Conv2d) and producer.groups == 1 and isinstance(consumer, PermutedBlockConv)
            and consumer.in_index is not None and len(consumer.in_index) <= producer.out_channels):
        index = consumer.in_index
        producer.weight = nn.Parameter(producer.weight[index].contiguous(memory_format=memory_format_of(producer.weight)))
        if producer.bias is not None:
            producer.bias = nn.Parameter(producer.bias[index].clone())
        producer.out_channels = len(index)
        consumer.in_index = None
        return True
    return False


@torch.no_grad()
def permuted_model(model, cn=8, b2=16, example_input=None, repeats=5, row_multiple=None, dense_layers=()):
    """An inference copy of a masked channel-unit regrouped model (eval mode,
    CPU, BatchNorm folded) with every block layer as a PermutedBlockConv and
    the permutations folded as the module docstring says. With
    `example_input`, a layer whose grouped form (with both gathers) times
    slower than its dense convolution on its real input stays dense
    (grouped_wins: a grouped form that pads to more FLOPs than dense needs a
    10% margin). Rows
    per group are padded to `row_multiple` (default: vector_rows()).
    Layers named in `dense_layers` stay dense convolutions.
    Returns (model, {layer: {"form": "grouped" | "dense (faster)" | "dense (more FLOPs grouped)" | "masked dense",
    "groups", "flops_ratio" (dense / grouped weights), "dense_ms", "grouped_ms",
    "dense_mflops", "grouped_mflops" (per image; when timed)}}, folded chains [(producer, consumer)])."""
    refresh_masked_weights(model)
    model = copy.deepcopy(model).cpu().eval()
    masks = {name: m.weight_mask.detach().clone() for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and hasattr(m, "weight_mask")}
    if any(isinstance(m, RegroupedConv2d) for m in model.modules()):
        raise ValueError("permuted_model takes the masked model, not one with RegroupedConv2d layers")
    strip_masks(model)
    fold_batchnorm(model)
    chains = _chain_names(model)  # before the convs change type
    inputs = layer_inputs(model, masks, example_input) if example_input is not None else {}
    forms = {}
    for name, mask in masks.items():
        conv = model.get_submodule(name)
        blocks = channel_blocks(mask, cn, b2) if conv.groups == 1 else None
        if blocks is None or name in dense_layers:
            forms[name] = {"form": "masked dense"}
            continue
        grouped = PermutedBlockConv.from_conv(conv, blocks, row_multiple or vector_rows())
        row = forms[name] = {"form": "grouped", "groups": grouped.groups,
                             "flops_ratio": conv.weight.numel() / grouped.weight.numel()}
        if name in inputs:
            x = inputs[name]
            pixels = conv(x[:1]).shape[-2:].numel()  # output pixels per image
            row.update(dense_mflops=2 * pixels * conv.weight.numel() / 1e6,  # per image, a multiply-add = 2 FLOPs
                       grouped_mflops=2 * pixels * grouped.weight.numel() / 1e6)
            t = alternating_medians({"grouped": lambda: grouped(x), "dense": lambda: conv(x)}, x.device, repeats,
                                    warmup=1)
            row.update(dense_ms=1e3 * t["dense"], grouped_ms=1e3 * t["grouped"])
            if not grouped_wins(t["dense"], t["grouped"], row["flops_ratio"]):
                # faster, or grouped ahead by less than the margin its extra FLOPs need
                row["form"] = "dense (faster)" if t["grouped"] > t["dense"] else "dense (more FLOPs grouped)"
                continue
        _set(model, name, grouped)
    folded = [(p, c) for p, c in chains if _fold_chain(model, p, c)]
    for name, block in residual_blocks(model):
        _set(model, name, PermutedResidualBlock(block))
    return model, forms, folded


def _chain_names(model):
    names = {m: n for n, m in model.named_modules()}
    return [(names[getattr(parent, p)], names[getattr(parent, c)]) for parent, p, _, c in conv_chains(model)]
