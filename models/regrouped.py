"""A convolution whose weight is a union of dense row x column blocks (a
regrouped ticket), computed block by block.

Blocks come from `pruner.regroup.find_blocks` on the 2-D view of the mask:
rows are output channels; a column is one (input channel, tap) position for
unit "weight", or one whole input channel for unit "channel". Rows outside
every block are all zero.

CPU paths (also the reference for GPU kernels):
- channel: per block, a dense convolution of the block's output channels
  over the block's gathered input channels, added into its output rows;
- weight: the input is unfolded once (im2col), each block multiplies its
  gathered columns by its dense weight, and the rows are added in place.
"""
import torch
import torch.nn.functional as F
from torch import nn


class RegroupedConv2d(nn.Module):
    def __init__(self, weight, blocks, unit="weight", stride=1, padding=0, dilation=1, bias=None):
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"weight must be 4-D [c_out, c_in, kh, kw], got shape {tuple(weight.shape)}")
        if unit not in ("weight", "channel"):
            raise ValueError(f"unit must be 'weight' or 'channel', got '{unit}'")
        self.unit = unit
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        flat = weight.detach().reshape(self.out_channels, self.in_channels, kh * kw)
        self.block_rows, self.block_cols, self.block_weights = [], [], nn.ParameterList()
        for i, (rows, cols) in enumerate(blocks):
            rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
            self.register_buffer(f"rows{i}", rows)
            self.register_buffer(f"cols{i}", cols)
            if unit == "channel":  # [rows, cols, kh, kw]
                w = flat[rows][:, cols].reshape(len(rows), len(cols), kh, kw)
            else:  # [rows, cols] over the unfolded (c_in * kh * kw) axis
                w = flat.reshape(self.out_channels, -1)[rows][:, cols]
            self.block_weights.append(nn.Parameter(w.clone()))
        self.num_blocks = len(blocks)
        covered = torch.zeros(self.out_channels, flat.shape[1] if unit == "channel" else flat[0].numel(), dtype=torch.bool)
        for rows, cols, _ in self.blocks():
            covered[rows.unsqueeze(1), cols.unsqueeze(0)] = True
        nonzero = (flat != 0).any(2) if unit == "channel" else (flat.reshape(self.out_channels, -1) != 0)
        if bool((nonzero & ~covered).any()):
            # A layer regroup left without blocks keeps its unstructured mask: use a masked nn.Conv2d for it.
            raise ValueError(f"the weight has {int((nonzero & ~covered).sum())} nonzero {unit} columns outside "
                             f"the {self.num_blocks} block(s); regrouped convolutions compute blocks only")

    def blocks(self):
        return [(getattr(self, f"rows{i}"), getattr(self, f"cols{i}"), self.block_weights[i])
                for i in range(self.num_blocks)]

    def output_size(self, h, w):
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def forward(self, x):
        n, _, h, w = x.shape
        oh, ow = self.output_size(h, w)
        out = x.new_zeros(n, self.out_channels, oh, ow)
        if self.unit == "channel":
            for rows, cols, weight in self.blocks():
                y = F.conv2d(x.index_select(1, cols), weight, None, self.stride, self.padding, self.dilation)
                out.index_add_(1, rows, y)
        else:
            columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [n, c_in*kh*kw, L]
            for rows, cols, weight in self.blocks():
                y = torch.matmul(weight, columns.index_select(1, cols))  # [n, rows, L]
                out.index_add_(1, rows, y.view(n, len(rows), oh, ow))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    @classmethod
    def from_conv(cls, conv, blocks, unit="weight"):
        """From an nn.Conv2d (groups=1) and the blocks of its regrouped mask."""
        if conv.groups != 1:
            raise ValueError("regrouped convolutions need groups=1")
        weight = conv.weight_orig * conv.weight_mask if hasattr(conv, "weight_mask") else conv.weight
        return cls(weight, blocks, unit, conv.stride, conv.padding, conv.dilation, conv.bias)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
