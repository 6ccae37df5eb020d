"""Tensor memory layout, for the code paths that pick a faster formulation
for channels-last tensors (oneDNN's preferred layout on the CPU)."""
import torch


def is_channels_last(x):
    """True for a 4-D tensor stored channels-last and not also plain
    contiguous (a tensor with 1 channel or 1x1 pixels is both)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def memory_format_of(x):
    """The memory format a new tensor should take to match x's layout."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def index_add_channels(out, index, y):
    """out[:, index] += y in place; index_add_ over a [pixels, channels] view
    when both are channels-last (4-D index_add_ there is ~6x slower). index
    None: y has out's channels."""
    if index is None:
        return out.add_(y)
    if is_channels_last(out) and is_channels_last(y):
        out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).index_add_(1, index, y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]))
        return out
    return out.index_add_(1, index, y)
