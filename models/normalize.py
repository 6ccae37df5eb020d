"""Input normalisation as the model's first layer.

Keeping mean/std inside the model (buffers `normalize.mean`, `normalize.std`,
shape [C]) means datasets hand the model raw [0, 1] pixels and checkpoints
carry their own preprocessing, as in the original code's checkpoints.
"""
import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).flatten().clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).flatten().clone())

    def forward(self, x):
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
