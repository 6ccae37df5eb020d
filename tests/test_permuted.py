"""The gather-free regrouped model (kernels.permuted) and BatchNorm folding:
outputs equal the masked model's for every architecture, layouts, rows
outside every block, the folds it makes, and torch.compile."""
import pytest
import torch
from torch import nn

from models import build_model
from pruner.fold_bn import conv_bn_pairs, fold_batchnorm
from models.vgg import VGG
from pruner.magnitude import global_magnitude_prune
from pruner.mask import Mask
from pruner.masking import apply_mask
from kernels.permuted import PermutedBlockConv, PermutedResidualBlock, permuted_model, slot_plan
from pruner.regroup import regroup_mask
from bench.network import trained_looking

ARCHS = ["res18", "res20s", "res50", "vgg16_bn", "wrn32", "mobilenet"]


def regrouped_ticket(arch, seed=0):
    """(masked model with trained-looking BatchNorms, input): a 90% magnitude
    mask with every 5th row of each layer emptied (so rows outside every
    block occur in every layer), regrouped into 4 parts (channel unit)."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, 3)
    mask = global_magnitude_prune(model, 0.9)
    for layer in mask.values():
        layer[::5] = 0
    mask, _ = regroup_mask(mask, cn=4, b2=2, unit="channel")
    apply_mask(model, mask)
    return trained_looking(model, seed), torch.rand(3, 3, 16, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_permuted_model_equals_masked_model(arch):
    masked, x = regrouped_ticket(arch)
    with torch.no_grad():
        expected = masked(x)
        deployed, layers, folded = permuted_model(masked, 4, 2)
        convs = {name: m for name, m in masked.named_modules() if name in layers}
        for name, row in layers.items():  # every (non-depthwise) layer's mask is blocks
            assert row["form"] == ("grouped" if convs[name].groups == 1 else "masked dense"), name
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = deployed.to(memory_format=fmt)
            assert (model(x.contiguous(memory_format=fmt)) - expected).abs().max() < 1e-4, fmt
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())  # folded into the convs
    grouped = [m for m in deployed.modules() if isinstance(m, PermutedBlockConv)]
    residual = [m for m in deployed.modules() if isinstance(m, PermutedResidualBlock)]
    assert all(block.add_index is not None for block in residual)  # the branch adds its slots by index
    # Outputs left in slot order: a producer folded into its consumer (conv -> BN -> ReLU -> conv inside a
    # block; VGG: between all convs) or a residual writer; mobilenet's pointwise convs feed depthwise convs.
    kept_in_slots = sum(m.out_index is None for m in grouped)
    assert kept_in_slots == len([p for p, _ in folded if layers.get(p, {}).get("form") == "grouped"]) + len(residual)
    assert (kept_in_slots > 0) == (arch != "mobilenet")


def test_slot_plan_gives_every_row_one_slot_and_pads_groups():
    blocks = [(torch.tensor([0, 5, 6]), torch.tensor([1, 2])), (torch.tensor([2]), torch.tensor([1, 2])),
              (torch.tensor([3, 4]), torch.tensor([0]))]
    groups, per_group, slot_rows = slot_plan(blocks, 8)  # rows 1 and 7 outside: the 2 free slots of group 2
    assert [(r.tolist(), c.tolist()) for r, c in groups] == [([0, 5, 6, 2], [1, 2]), ([3, 4], [0])]
    assert per_group == 4 and slot_rows.tolist() == [0, 5, 6, 2, 3, 4, 1, 7]
    groups, per_group, slot_rows = slot_plan(blocks, 12)  # 6 rows outside, 2 free slots: 2 more per group
    assert per_group == 6 and sorted(slot_rows[slot_rows >= 0].tolist()) == list(range(12))
    assert slot_plan(blocks, 8, row_multiple=8)[1] == 8
    groups, per_group, slot_rows = slot_plan(blocks, 8, row_multiple=8)
    assert (slot_rows == -1).sum() == 16 - 8  # padding slots read nothing


def test_fold_batchnorm_keeps_outputs_and_finds_every_pair():
    torch.manual_seed(0)
    model = trained_looking(build_model("res20s", 10, 3))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        folded, pairs = fold_batchnorm(model)
        assert len(pairs) == sum(isinstance(m, nn.Conv2d) for m in build_model("res20s", 10, 3).modules())
        assert (folded(x) - expected).abs().max() < 1e-5
    assert conv_bn_pairs(folded) == []
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("res20s", 10, 3).train())


def test_compiled_permuted_model_equals_eager():
    """Compiled: the first residual block with a shortcut conv (gathers in and
    out, a folded chain and the residual slots: every path of the compiled
    form; inductor takes about half a minute for the whole network)."""
    masked, _ = regrouped_ticket("res20s")
    with torch.no_grad():
        deployed, _, _ = permuted_model(masked, 4, 2)
        block = deployed.layer2[0]
        convs = [m for m in block.modules() if isinstance(m, PermutedBlockConv)]
        assert isinstance(block, PermutedResidualBlock) and len(convs) == 3
        assert convs[0].out_index is None and convs[1].in_index is not None and convs[2].out_index is not None
        x = torch.rand(3, 16, 16, 16)
        assert (torch.compile(block)(x.clone()) - block(x.clone())).abs().max() < 1e-4


def test_a_plain_producer_computes_its_regrouped_consumers_gathered_input():
    """features.0 (kept dense) feeds features.3, whose two blocks read input
    channels {0..3} and {4..7} in the order the blocks list them: the
    producer computes its channels in that order and the consumer gathers
    nothing. Also: a layer kept dense by name stays a plain convolution."""
    torch.manual_seed(0)
    model = VGG([8, 8, "M", 6], 5, 3, (0.5,) * 3, (0.25,) * 3)
    mask = Mask()
    second = torch.zeros(8, 8, 3, 3)
    second[:4, [2, 0, 1, 3]] = 1
    second[4:, 4:] = 1
    mask["features.3"] = second
    mask["features.7"] = (torch.rand(6, 8, 1, 1).expand(6, 8, 3, 3) < 0.5).float()
    mask["features.0"] = torch.ones(8, 3, 3, 3)
    apply_mask(model, mask)
    trained_looking(model)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        deployed, layers, folded = permuted_model(model, 2, 1, dense_layers=("features.0",))
        assert (deployed(x) - model(x)).abs().max() < 1e-4
    assert layers["features.0"]["form"] == "masked dense" and layers["features.3"]["form"] == "grouped"
    assert ("features.0", "features.3") in folded
    producer, consumer = deployed.features[0], deployed.features[3]
    assert isinstance(producer, nn.Conv2d) and consumer.in_index is None
    assert producer.out_channels == 8  # the gathered list is a permutation here: no extra channels
