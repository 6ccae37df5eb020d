"""Architectures describe themselves (models.structure): the chains and
residual sums they declare, slimming driven only by those declarations, and
ResNet-34, added as one constructor and a registry entry, through IMP with
refill, slimming and regroup."""
import torch
from torch import nn

from app.config import ImpConfig, RefillConfig, RegroupConfig, TrainConfig
from app.imp import next_mask
from bench.network import trained_looking
from models import build_model
from models.structure import conv_chains, residual_blocks
from pruner.mask import Mask
from pruner.masking import apply_mask, current_mask, effective_weights, load_plain_weights
from pruner.refill import is_channel_wise
from pruner.slim import SlimConv, slim


def test_declared_chains_and_residual_sums():
    counts = {"res18": (8, 8), "res34": (16, 16), "res20s": (9, 9), "vgg16_bn": (12, 0), "mobilenet": (13, 0)}
    for arch, (chains, blocks) in counts.items():
        model = build_model(arch, 10, 3)
        assert (len(conv_chains(model)), len(residual_blocks(model))) == (chains, blocks), arch
    bottlenecks = residual_blocks(build_model("res50", 10, 3))
    assert len(bottlenecks) == 16 and all(block.residual_depth == 3 for _, block in bottlenecks)


class TwoConvNet(nn.Module):
    """An architecture slimming has never heard of: it declares its chain."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.conv_b, self.bn_b = nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def conv_chains(self):
        return [(self, "conv_a", "bn_a", "conv_b")]

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.bn_b(self.conv_b(x)))
        return self.head(x.mean((2, 3)))


def test_slimming_follows_what_a_new_architecture_declares():
    torch.manual_seed(0)
    model = trained_looking(TwoConvNet())
    keep = torch.zeros(12, 1, 1, 1)
    keep[[1, 4, 7, 9]] = 1
    apply_mask(model, Mask({"conv_a": keep.expand(12, 3, 3, 3).clone(), "conv_b": torch.ones(8, 12, 3, 3)}))
    slimmed = slim(model)
    assert isinstance(slimmed.conv_a, SlimConv) and slimmed.conv_a.weight.shape[0] == 4
    assert slimmed.conv_b.weight.shape[1] == 4 and slimmed.bn_a.num_features == 4  # the chain was cut
    x = torch.rand(3, 3, 10, 10)
    with torch.no_grad():
        assert (slimmed(x) - model(x)).abs().max().item() < 1e-5
    model.conv_chains = lambda: []  # undeclared: the producer keeps its width (its outputs are scattered)
    assert slim(model).conv_b.weight.shape[1] == 12


def test_res34_through_imp_refill_slimming_and_regroup():
    torch.manual_seed(0)
    model = trained_looking(build_model("res34", 10, 3))
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 21.3) < 0.05
    rewind = {k: v.clone() for k, v in effective_weights(model).items()}
    train = TrainConfig(arch="res34")
    refilling = ImpConfig(train, rate=0.5, refilling=RefillConfig())
    for _ in range(2):  # two IMP rounds: prune, refill, rewind, mask
        mask, reports = next_mask(model, None, refilling)
        load_plain_weights(model, rewind)
        apply_mask(model, mask)
    assert all(is_channel_wise(m) for m in mask.values()) and len(reports["next_refill"]) == len(mask)
    assert 0.5 < current_mask(model).sparsity() < 0.85
    slimmed = slim(model.eval())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (slimmed(x) - model(x)).abs().max().item() < 1e-4
    regrouping = ImpConfig(train, rate=0.5, regrouping=RegroupConfig(cn="auto", regroup_unit="channel"))
    mask, reports = next_mask(model, None, regrouping)
    layers = reports["next_regroup"]
    assert len(layers) == len(mask) and all(info["blocks"] for info in layers.values())
