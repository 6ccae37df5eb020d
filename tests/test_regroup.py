"""Regroup: the block search on hand-worked masks (column order included),
partitioners, determinism, edge cases, bad input, the retraining script and
IMP-Regroup."""
import json

import numpy as np
import pytest
import torch

import main_eval_regroup_retrain
from conftest import run_script, run_seed_retrain
from pruner.partition import connectivity, greedy_partition, max_part_size, mtkahypar_partition
from models import build_model
from pruner.magnitude import global_magnitude_prune
from pruner.regroup import UNITS, blocks_to_mask, find_blocks, parse_parts, parts_for, regroup, regroup_layer, regroup_mask
from utils.checkpoint import load_file
from utils.errors import InvalidInput

# One part (cn=1, b2=0). Column counts 1,1,3,3 -> sorted order 2,3,0,1.
#   i=1 (col 2):    outside nonzeros per row 2,1,2 -> 1 > 1.5*2 fails
#   i=2 (cols 2,3): outside 1,0,1                  -> 2 > 1.5*1 holds: block = all rows x {2,3}
# Walking columns in natural order instead would stop at i=3 with columns {0,1,2}.
HAND = torch.tensor([[1, 0, 1, 1],
                     [0, 0, 1, 1],
                     [0, 1, 1, 1]], dtype=torch.float32)


def test_block_search_uses_sorted_column_order():
    blocks = find_blocks(HAND, t1=1.5, cn=1, nn=32, b2=0)
    assert [(r.tolist(), c.tolist()) for r, c in blocks] == [([0, 1, 2], [2, 3])]
    expected = torch.tensor([[0, 0, 1, 1]] * 3, dtype=torch.float32)
    assert torch.equal(regroup(HAND, t1=1.5, cn=1, nn=32, b2=0), expected)


def test_t1_moves_the_stopping_point():
    # t1 = 0.4: i=1 gives outside 2,1,2 -> 1 > 0.8 holds: only column 2.
    blocks = find_blocks(HAND, t1=0.4, cn=1, nn=32, b2=0)
    assert [(r.tolist(), c.tolist()) for r, c in blocks] == [([0, 1, 2], [2])]


def test_rows_split_into_multiple_of_nn_and_rest():
    blocks = find_blocks(HAND, t1=1.5, cn=1, nn=2, b2=0)
    assert [(r.tolist(), c.tolist()) for r, c in blocks] == [([0, 1], [2, 3]), ([2], [2, 3])]


def test_b2_threshold_and_no_block_keeps_mask():
    assert find_blocks(HAND, cn=1, b2=3) == []  # 3 rows is not more than b2=3
    assert torch.equal(regroup(HAND, cn=1, b2=3), HAND)
    new, info = regroup_layer(HAND.view(3, 4, 1, 1), cn=1, b2=3)
    assert info.kept_mask and torch.equal(new, HAND.view(3, 4, 1, 1))


@pytest.mark.parametrize("partitioner", ["greedy", "mtkahypar"])
def test_two_separable_groups_are_found(partitioner):
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1
    mask[4:, 4:] = 1
    mask[0, 5] = 1  # one stray nonzero, outside both blocks
    perm = torch.tensor([3, 6, 0, 5, 1, 7, 2, 4])  # shuffled rows: the partitioner must group them
    shuffled = mask[perm]
    # t1=3.5: a 4-row part needs all 4 of its columns (3 > 3.5 * 1 fails), the stray stays outside (4 > 3.5 * 1).
    blocks = find_blocks(shuffled, t1=3.5, cn=2, nn=32, b2=1, partitioner=partitioner)
    got = sorted((sorted(perm[r].tolist()), c.tolist()) for r, c in blocks)
    assert got == [([0, 1, 2, 3], [0, 1, 2, 3]), ([4, 5, 6, 7], [4, 5, 6, 7])]


def test_edge_cases_have_defined_results():
    empty = torch.zeros(5, 7)
    assert torch.equal(regroup(empty), empty)
    full = torch.ones(64, 9)
    # every part keeps the first i columns with i > 1.5 * (9 - i): i = 6
    expected = torch.zeros(64, 9)
    expected[:, :6] = 1
    assert torch.equal(regroup(full, cn=8, b2=4), expected)
    assert torch.equal(regroup(full, cn=8, b2=16), full)  # parts of 8 rows: no block, mask kept
    one_row = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(regroup(one_row, b2=0), one_row)
    few = (torch.rand(3, 10) > 0.5).float()
    assert torch.equal(regroup(few, cn=8, b2=16), few)  # fewer rows than cn


def test_same_seed_same_masks():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(128, 576, generator=g) > 0.7).float()
    a = regroup(mask, b2=4, seed=3)
    assert torch.equal(a, regroup(mask, b2=4, seed=3))
    assert torch.equal(regroup(mask, b2=4, seed=3, partitioner="mtkahypar"),
                       regroup(mask, b2=4, seed=3, partitioner="mtkahypar"))


def test_result_is_union_of_blocks_same_shape_and_dtype():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(96, 288, generator=g) > 0.8).to(torch.float64)
    blocks = find_blocks(mask, cn=4, nn=8, b2=4)
    new = regroup(mask, cn=4, nn=8, b2=4)
    assert new.shape == mask.shape and new.dtype == mask.dtype
    assert torch.equal(new, blocks_to_mask(blocks, mask.shape, mask.dtype))
    assert all(len(r) % 8 == 0 or len(r) < 8 for r, _ in blocks)


def test_channel_unit_blocks_are_whole_input_channels():
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(64, 32, 3, 3, generator=g) > 0.85).float()
    new, info = regroup_layer(mask, cn=4, b2=4, unit="channel")
    taps = new.sum((2, 3))
    assert torch.all((taps == 0) | (taps == 9)) and not info.kept_mask


@pytest.mark.parametrize("bad, message", [
    (dict(mask=torch.full((4, 4), 0.5)), "binary"),
    (dict(mask=torch.ones(2, 3, 3)), "2-D"),
    (dict(cn=0), "cn"),
    (dict(t1=0.0), "t1 must be positive"),
    (dict(t1=-1.0), "t1 must be positive"),
])
def test_bad_input(bad, message):
    kwargs = dict(mask=torch.ones(4, 4))
    kwargs.update(bad)
    with pytest.raises(InvalidInput, match=message):
        regroup(kwargs.pop("mask"), **kwargs)


@pytest.mark.parametrize("arch", ["res18", "res20s"])
@pytest.mark.parametrize("unit", UNITS)
def test_auto_parts_give_every_layer_blocks(arch, unit):
    torch.manual_seed(0)
    mask = global_magnitude_prune(build_model(arch, 10, 3), 0.9)
    _, fixed = regroup_mask(mask, unit=unit)  # the paper's cn 8, b2 16: small layers get no block
    assert any(info.kept_mask for info in fixed.values())
    new_mask, infos = regroup_mask(mask, cn="auto", unit=unit)
    for name, info in infos.items():
        rows = int(mask[name].flatten(1).any(1).sum())
        assert info.parts == max(1, int(rows / 32 + 0.5)) and info.blocks and not info.kept_mask, name
        new = new_mask[name]
        grid = new.flatten(2).amax(2) if unit == "channel" else new.flatten(1)
        assert torch.equal(grid, blocks_to_mask(info.blocks, grid.shape)), name  # the union of its blocks


def test_auto_parts_rule():
    assert [parts_for(rows, "auto", 16) for rows in (1, 16, 47, 48, 64, 512)] == [1, 1, 1, 2, 2, 16]
    assert [parts_for(rows, 8, 16) for rows in (3, 64)] == [3, 8]
    assert parse_parts("Auto") == "auto" and parse_parts("12") == 12 and parse_parts("x") == "x"


def test_greedy_respects_balance_and_beats_random():
    rng = np.random.default_rng(0)
    mask = rng.random((256, 1152)) < 0.05
    parts = greedy_partition(mask, 8, 0.1, 0)
    assert np.bincount(parts, minlength=8).max() <= max_part_size(256, 8, 0.1)
    random_parts = rng.permutation(256) % 8
    assert connectivity(mask, parts, 8) < connectivity(mask, random_parts, 8)
    reference = connectivity(mask, mtkahypar_partition(mask, 8, 0.1, 0), 8)
    assert connectivity(mask, parts, 8) <= 1.05 * reference


def test_seed_readme_regroup_command_verbatim(seed_imp_run):
    cwd, proc = run_seed_retrain(seed_imp_run, "main_eval_regroup_retrain.py", "regroup")
    assert "nonzeros kept" in proc.stdout and "total MFLOPs" in proc.stdout
    summary = json.loads((cwd / "regroup" / "summary.json").read_text())
    layers = summary["layers"]
    assert any(not v["kept_mask"] for v in layers.values())
    assert summary["flops"]["regroup"] < summary["flops"]["dense"]


def test_regroup_retrains_within_two_points_of_dense(digits_imp_run, tmp_path):
    save = tmp_path / "regroup"
    ck1 = digits_imp_run / "1checkpoint.pth.tar"
    # res20s has 16-64 rows per layer: b2=4 lets parts of 8 rows form blocks.
    proc = run_script("main_eval_regroup_retrain.py", "--pretrained", ck1, "--mask_dir", ck1, "--b2", "4",
                      "--save_dir", save, "--save_model")
    assert proc.returncode == 0, proc.stderr
    dense = json.loads((digits_imp_run / "summary.json").read_text())["states"][0]["test_acc_at_best_val"]
    summary = json.loads((save / "summary.json").read_text())
    record = summary["states"][0]
    print(f"dense {dense:.2f}% regroup {record['test_acc_at_best_val']:.2f}% at {100 * record['sparsity']:.2f}% sparsity")
    assert record["test_acc_at_best_val"] >= dense - 2.0
    sd = load_file(str(save / "checkpoint.pth.tar"))["state_dict"]
    for name, layer in summary["layers"].items():
        if layer["kept_mask"]:
            continue
        mask2d = sd[name + ".weight_mask"].flatten(1)
        blocks = [(torch.tensor(r), torch.tensor(c)) for r, c in layer["blocks"]]
        assert torch.equal(mask2d, blocks_to_mask(blocks, mask2d.shape))  # exactly the union of its blocks


def test_imp_regroup(tmp_path):
    save = tmp_path / "imp_regroup"
    proc = run_script("main_imp.py", "--epochs", "1", "--pruning_times", "2", "--regroup", "--b2", "4",
                      "--regroup_unit", "channel", "--round_to", "4", "--save_dir", save)
    assert proc.returncode == 0, proc.stderr
    sd = load_file(str(save / "1checkpoint.pth.tar"))["state_dict"]
    # layer3 has 64 rows: parts of 8 > b2 form blocks (smaller layers keep their masks)
    taps = [v.sum((2, 3)) for k, v in sd.items() if k.startswith("layer3") and k.endswith("conv1.weight_mask")]
    assert taps and all(torch.all((t == 0) | (t == 9)) for t in taps)
    channels = torch.cat([(t > 0).sum(1) for t in taps])  # input channels per output channel = its block's
    assert torch.all((channels == 0) | (channels % 4 == 0) | (channels == taps[0].shape[1]))
    assert "no block: mask kept" in proc.stdout
    next_regroup = json.loads((save / "summary.json").read_text())["states"][0]["next_regroup"]
    assert next_regroup["layer3.0.conv1"]["parts"] == 8 and next_regroup["layer3.0.conv1"]["blocks"]
    # The ticket exports as ONNX (how it was regrouped comes from the checkpoint's arguments).
    export = run_script("main_eval_regroup_retrain.py", "--evaluate", "--checkpoint", save / "1checkpoint.pth.tar",
                        "--export_onnx", tmp_path / "regrouped.onnx", "--save_dir", tmp_path / "eval")
    assert export.returncode == 0, export.stderr
    assert "regrouped ticket exported to" in export.stdout and "masked dense convolutions: layer1" in export.stdout
    assert (tmp_path / "regrouped.onnx").stat().st_size > 0


def test_script_bad_input(tmp_path, cli_error):
    for argv, expected in ((["--cn", "0"], "cn (parts per layer) must be a whole number >= 1 or 'auto', got '0'"),
                           (["--cn", "abc"], "cn (parts per layer) must be a whole number >= 1 or 'auto', got 'abc'"),
                           (["--t1", "0"], "t1 must be positive"),
                           (["--round_to", "0", "--regroup_unit", "channel"], "--round_to must be a positive whole"),
                           (["--round_to", "8"], "--round_to 8 rounds whole input channels: use it with --regroup_unit channel"),
                           (["--export_onnx", "/nonexistent/r.onnx", "--save_model"], "--export_onnx '/nonexistent/r.onnx': its folder")):
        line = cli_error(main_eval_regroup_retrain, argv + ["--mask_dir", "x", "--prune-type", "trained", "--save_dir",
                                                            str(tmp_path / "o")])
        assert expected in line
