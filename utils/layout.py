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
