"""Shipping tickets: refill and regroup rounded to hardware channel blocks
(--round_to), ONNX export checked in ONNX Runtime, and torch.compile of the
slimmed and grouped models."""
import json

import pytest
import torch

from conftest import digits_res20s_ticket
from models import build_model
from kernels.regrouped import GroupedBlockConv, RegroupedConv2d, regroup_model
from kernels.grouped import channel_blocks, grouped_model
from pruner.magnitude import global_magnitude_prune
from pruner.masking import apply_mask
from pruner.refill import kept_channels, refill
from pruner.regroup import find_blocks, regroup_layer, regroup_mask
from pruner.slim import slim
from utils.errors import InvalidInput
from app.onnx_export import export_onnx
from bench.network import trained_looking

EXPORT_ARCHS = ["res18", "res20s", "vgg16_bn", "wrn32", "mobilenet"]


@pytest.fixture(scope="module")
def ticket():
    return digits_res20s_ticket(0.7)


def test_round_to_one_is_the_papers_k_and_bad_values_are_refused(ticket):
    model, mask, _ = ticket
    assert all(torch.equal(a, b) for a, b in zip(refill(model, mask, round_to=1).values(),
                                                   refill(model, mask).values()))
    m = torch.zeros(20, 9)
    m[:3] = 1  # 3 channels' worth
    assert [kept_channels(m, 0.0, n) for n in (1, 2, 4, 16, 32)] == [3, 4, 4, 16, 20]  # capped at c_out
    for bad in (0, -4, 2.5):
        with pytest.raises(InvalidInput, match="--round_to must be a positive whole number"):
            refill(model, mask, round_to=bad)


def test_rounded_channel_regroup_blocks_hold_a_multiple_of_n_input_channels():
    g = torch.Generator().manual_seed(2)
    layer = (torch.rand(64, 40, 3, 3, generator=g) > 0.8).float()
    _, plain = regroup_layer(layer, cn=4, nn=8, b2=4, unit="channel")
    _, rounded = regroup_layer(layer, cn=4, nn=8, b2=4, unit="channel", round_to=16)
    assert len(plain.blocks) == len(rounded.blocks) > 0
    for (rows, cols), (rows_r, cols_r) in zip(plain.blocks, rounded.blocks):
        assert torch.equal(rows, rows_r)
        assert len(cols_r) % 16 == 0 or len(cols_r) == 40
        assert set(cols.tolist()) <= set(cols_r.tolist())  # the paper's columns, then the next by count
    # more columns than the part has nonzero columns: the layer's empty channels fill the multiple
    grid = torch.zeros(20, 12)
    grid[:, :3] = 1
    blocks = find_blocks(grid, cn=1, nn=32, b2=2, round_to=8)
    assert [c.tolist() for _, c in blocks] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(InvalidInput, match="--regroup_unit channel"):
        regroup_layer(layer, unit="weight", round_to=4)


def regrouped_ticket(arch, unit="channel", sparsity=0.8):
    torch.manual_seed(0)
    model = trained_looking(build_model(arch, 10, 3))
    # b2 = 2 so that even 16-channel layers form blocks
    new_mask, infos = regroup_mask(global_magnitude_prune(model, sparsity), cn=4, nn=8, b2=2, unit=unit)
    apply_mask(model, new_mask)
    return model, infos


def test_blocks_recovered_from_a_channel_regrouped_mask_are_the_regroup_blocks():
    model, infos = regrouped_ticket("res20s")
    for name, info in infos.items():
        mask = model.get_submodule(name).weight_mask
        found = channel_blocks(mask, cn=4)
        if info.kept_mask:
            continue
        merged = {}
        for rows, cols in info.blocks:  # regroup splits a part's rows by nn: same columns, one group
            merged.setdefault(tuple(cols.tolist()), set()).update(rows.tolist())
        assert sorted((sorted(r.tolist()), c.tolist()) for r, c in found) == \
            sorted((sorted(rows), list(cols)) for cols, rows in merged.items())
    assert channel_blocks(torch.ones(4, 3, 3, 3).index_fill_(3, torch.tensor([0]), 0), 8) is None  # partial taps


@pytest.mark.parametrize("arch", EXPORT_ARCHS)
def test_onnx_export_of_slimmed_and_grouped_tickets_matches_pytorch(arch, tmp_path):
    model = trained_looking(build_model(arch, 10, 3))
    apply_mask(model, refill(model, global_magnitude_prune(model, 0.7), "magnitude", 0.0, round_to=8))
    x = torch.rand(3, 3, 32, 32)
    slimmed = slim(model)
    error = export_onnx(slimmed, [x[:2], x, x[:1]], tmp_path / "slim.onnx")
    assert error < 1e-4 and (tmp_path / "slim.onnx").stat().st_size > 0
    with torch.no_grad():
        assert (slimmed(x) - model(x)).abs().max() < 1e-4
    regrouped, _ = regrouped_ticket(arch)
    grouped, forms = grouped_model(regrouped, "channel", 4)
    assert any(isinstance(m, GroupedBlockConv) for m in grouped.modules()), forms
    with torch.no_grad():
        assert (grouped(x) - regrouped(x)).abs().max() < 1e-4
    assert export_onnx(grouped, [x[:2], x, x[:1]], tmp_path / "grouped.onnx") < 1e-4


def test_a_failing_onnx_check_keeps_no_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    import numpy as np
    import onnxruntime
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    class Wrong:  # ONNX Runtime returning other numbers than PyTorch
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            return [np.full((len(feeds["images"]), 10), 7.0, dtype=np.float32)]
    monkeypatch.setattr(onnxruntime, "InferenceSession", Wrong)
    with pytest.raises(InvalidInput, match="differ from PyTorch's"):
        export_onnx(model, [torch.rand(2, 3, 32, 32)], target)
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind
    with pytest.raises(InvalidInput, match="cannot write"):
        export_onnx(model, [torch.rand(2, 3, 32, 32)], tmp_path / "missing" / "model.onnx")


def test_compiled_slimmed_and_grouped_models_equal_eager():
    """torch.compile (inductor, CPU) of the slimmed refill ticket and of the
    grouped regroup ticket (made from a model of RegroupedConv2d layers) give
    the eager outputs. The compiled part is layer2 (3 residual blocks, the
    first with a shortcut conv: every module type of both forms), as
    inductor takes about a minute for a whole network on 2 cores."""
    x = torch.rand(4, 3, 32, 32)
    model = trained_looking(build_model("res20s", 10, 3))
    apply_mask(model, refill(model, global_magnitude_prune(model, 0.7), "magnitude", 0.0, round_to=8))
    block_model, _ = regroup_model(*regrouped_ticket("res20s"), "channel")
    assert any(isinstance(m, RegroupedConv2d) for m in block_model.modules())
    grouped, forms = grouped_model(block_model)
    assert not any(isinstance(m, RegroupedConv2d) for m in grouped.modules())
    assert any(isinstance(m, GroupedBlockConv) for m in grouped.modules()), forms
    with torch.no_grad():
        assert (grouped(x) - block_model(x)).abs().max().item() < 1e-5
        for whole in (slim(model), grouped):
            eager, features = whole.layer2, torch.rand(4, 16, 32, 32)  # residual blocks add into their input:
            compiled = torch.compile(eager)                               # each call gets a copy
            assert (compiled(features.clone()) - eager(features.clone())).abs().max().item() < 1e-5, type(whole).__name__


def test_onnx_speed_times_every_ticket_in_every_runtime(tmp_path, capsys, cli_error):
    """profile/onnx_speed.py on a tiny res20s: every model exported (checked
    against PyTorch in ONNX Runtime inside export_onnx) and timed in PyTorch
    and ONNX Runtime per batch size; speedups are paired with dense's calls,
    so dense's own is exactly 1; bad numbers get one line."""
    from conftest import load_script
    onnx_speed = load_script("profile/onnx_speed.py")
    out = tmp_path / "onnx_speed.json"
    onnx_speed.main(onnx_speed.get_args_parser().parse_args(
        ["--arch", "res20s", "--sparsity", "0.8", "--round_to", "8", "--batch_size", "1", "3", "--image_size", "8",
         "--repeats", "3", "--cn", "4", "--b2", "4", "--out", str(out)]))
    assert "speedup: median of the rounds' dense/model ratios" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    models = ["dense", "slim", "slim, round 8", "regrouped"]
    assert [(row["batch"], row["model"]) for row in rows] == [(b, m) for b in (1, 3) for m in models]
    for row in rows:
        for kind in ("PyTorch", "ORT CPU"):
            t = row[kind]
            assert t["ms"] > 0 and t["speedup_p10"] <= t["speedup"] <= t["speedup_p90"]
            if row["model"] == "dense":
                assert t["speedup"] == 1.0 and row["flops_ratio"] == 1.0
    assert all(row["flops_ratio"] > 1 for row in rows if row["model"] != "dense")
    assert "--round_to, --batch_size and --repeats must be positive" in cli_error(onnx_speed, ["--round_to", "0"])
    assert "unknown --arch 'res19'" in cli_error(onnx_speed, ["--arch", "res19"])
