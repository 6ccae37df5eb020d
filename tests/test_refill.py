"""Refill / refill+: exact channel counts and ordering per criterion, the
retraining script (seed command, accuracy, evaluate, bad input), IMP-Refill,
and slimming to a physically smaller model with equal outputs."""
import json
import subprocess
import sys

import pytest
import torch

import main_eval_fillback
from conftest import digits_res20s_ticket, run_script, run_seed_retrain
from models import build_model, model_names
from pruner.magnitude import global_magnitude_prune
from pruner.mask import Mask
from pruner.masking import apply_mask
from pruner.refill import (CRITERIA, channel_scores, is_channel_wise, kept_channels, needs_batch, original_count,
                           original_rule, refill, refill_layers, refill_layers_report, refilled_mask, select_channels)
from pruner.slim import slim
from utils.checkpoint import load_file
from app.datasets import load_dataset
from utils.errors import InvalidInput


def test_k_formula_by_hand():
    m = torch.zeros(4, 10)
    m.view(-1)[:13] = 1  # 13 weights = 1.3 channels' worth
    assert kept_channels(m, 0.0) == 1  # floor(1.3)
    assert kept_channels(m, 0.5) == 2  # floor(1.3 + 2.7 * 0.5) = floor(2.65)
    assert kept_channels(m, 1.0) == 4
    assert kept_channels(torch.zeros(4, 10), 0.0) == 1  # never an empty layer


def test_ties_keep_lower_channel_indices():
    model = build_model("res20s", 10, 1, (0.3,), (0.2,))
    layer = model.layer1[0].conv1.weight
    m = torch.zeros_like(layer)
    m[:, :, 1, 1] = 1  # every channel holds the same count: 16 of 144 weights each
    new = refill(model, Mask({"layer1.0.conv1": m}), "remain", 0.2)["layer1.0.conv1"]
    kept = new.flatten(1).amax(1).nonzero().flatten().tolist()
    assert kept == list(range(kept_channels(m, 0.2)))  # floor(1 + 15*0.2) = 4 -> channels 0..3


@pytest.fixture(scope="module")
def ticket():
    return digits_res20s_ticket(0.5)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("round_to", [1, 8])
def test_refill_is_channel_wise_with_exactly_k_best_channels(ticket, criterion, rate, round_to):
    """k channels (rounded up to a multiple of round_to, at most c_out), the
    best-scoring ones: the unrounded ticket's channels and then the next by score."""
    model, mask, batch = ticket
    new_mask = refill(model, mask, criterion, rate, batch, round_to)
    plain = refill(model, mask, criterion, rate, batch)
    scores = channel_scores(model, mask, criterion, batch)
    report = refill_layers_report(mask, refill_layers(model, mask, criterion, rate, batch, round_to))
    for name, m in mask.items():
        new = new_mask[name]
        assert is_channel_wise(new), name
        rows = new.flatten(1).amax(1) > 0
        k, c_out = int(rows.sum()), m.shape[0]
        assert k == min(c_out, -(-kept_channels(m, rate) // round_to) * round_to) == kept_channels(m, rate, round_to)
        assert k % round_to == 0 or k == c_out, name
        assert torch.all(new >= plain[name]), name  # rounding only adds channels
        if not rows.all():  # every kept channel scores at least as high as every removed one
            assert scores[name][rows].min() >= scores[name][~rows].max(), name
        info = report[name]
        assert info["kept_channels"] == k and info["kept_channels_unrounded"] == kept_channels(m, rate)
        assert info["tied_channels_left"] == 0
        assert info["weights_added_by_rounding"] == int((new - plain[name]).sum())


def test_refill_plus_keeps_more_channels(ticket):
    model, mask, batch = ticket
    assert refill(model, mask, "magnitude", 0.5).density() > refill(model, mask, "magnitude", 0.0).density()


@pytest.mark.parametrize("arch", model_names())
def test_slimmed_model_equals_masked_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # trained-looking statistics, so removed channels leave non-zero constants behind
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
        bn.weight.data.uniform_(0.5, 1.5)
    mask = refill(model, global_magnitude_prune(model, 0.6), "magnitude", 0.0)
    apply_mask(model, mask)
    slimmed = slim(model)
    folded = slim(model, fold_bn=True)  # BatchNorm folded into the slimmed convs, constant maps included
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        diff = (slimmed(x) - model(x)).abs().max().item()
        folded_diff = (folded(x) - model(x)).abs().max().item()
    assert diff < 1e-4 and folded_diff < 1e-4
    assert sum(p.numel() for p in slimmed.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    batchnorms = [sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) for net in (slimmed, folded)]
    assert batchnorms[1] < batchnorms[0] and (batchnorms[1] == 0 or arch in ("mobilenet", "vgg16_bn")), batchnorms


def test_slimmed_resnet_in_channels_last_equals_masked_model():
    """The residual sums add kept channels through a [pixels, channels] view in channels-last."""
    torch.manual_seed(1)
    model = build_model("res18", 10, 3).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.bias.data.uniform_(-1, 1)
    mask = refill(model, global_magnitude_prune(model, 0.7), "magnitude", 0.0)
    apply_mask(model, mask)
    slimmed = slim(model).to(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = slimmed(x.contiguous(memory_format=torch.channels_last))
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch, round_to", [("res20s", 16), ("mobilenet", 32)])
def test_slimmed_layers_that_keep_every_channel_scatter_nothing(arch, round_to):
    """Rounding k up to c_out keeps whole layers (res20s' 16-wide ones at
    --round_to 16, a MobileNet depthwise layer at 32): their slimmed convs
    write their output as it is, with no zero tensor and index copy, a whole
    depthwise layer reads its input without a gather, and the model still
    equals the masked one."""
    from pruner.slim import SlimConv
    torch.manual_seed(0)
    model = build_model(arch, 10, 3).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.bias.data.uniform_(-1, 1)
    apply_mask(model, refill(model, global_magnitude_prune(model, 0.7), "magnitude", 0.0, None, round_to))
    slimmed = slim(model).to(memory_format=torch.channels_last)
    convs = [m for m in slimmed.modules() if isinstance(m, SlimConv)]
    whole = [m for m in convs if m.weight.shape[0] == m.out_channels]
    assert whole and len(whole) < len(convs)  # some layers kept whole, others cut
    assert all(m.out_index is None for m in whole)
    assert all(m.in_index is None for m in whole if m.groups > 1) and (arch != "mobilenet" or any(
        m.groups > 1 for m in whole))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert (slimmed(x.contiguous(memory_format=torch.channels_last)) - model(x)).abs().max().item() < 1e-4


def test_slim_refuses_unstructured_masks():
    model = build_model("res20s", 10, 1, (0.3,), (0.2,))
    with pytest.raises(InvalidInput, match="not channel-wise"):
        slim(model, global_magnitude_prune(model, 0.5))


def test_seed_readme_refill_command_verbatim(seed_imp_run):
    cwd, proc = run_seed_retrain(seed_imp_run, "main_eval_fillback.py", "refill")
    summary = json.loads((cwd / "refill" / "summary.json").read_text())
    assert abs(summary["ticket_sparsity"] - 0.2) < 1e-3
    assert all(layer["density_after"] in (0.0, 1.0) or layer["kept_channels"] >= 1 for layer in summary["layers"].values())
    ck = load_file(str(cwd / "refill" / "checkpoint.pth.tar"))
    assert "state_dict" not in ck and ck["result"]["test_acc"]  # results always, weights with --save_model


def test_refill_retrains_within_two_points_of_dense(digits_imp_run, tmp_path):
    save = tmp_path / "refill"
    ck1 = digits_imp_run / "1checkpoint.pth.tar"
    proc = run_script("main_eval_fillback.py", "--pretrained", ck1, "--mask_dir", ck1, "--criterion", "magnitude",
                      "--save_dir", save, "--save_model", "--export_slim", save / "slim.pt2", "--round_to", "8",
                      "--export_onnx", tmp_path / "slim.onnx")
    assert proc.returncode == 0, proc.stderr
    dense = json.loads((digits_imp_run / "summary.json").read_text())["states"][0]["test_acc_at_best_val"]
    refilled = json.loads((save / "summary.json").read_text())["states"][0]
    print(f"dense {dense:.2f}% refill {refilled['test_acc_at_best_val']:.2f}% at {100 * refilled['sparsity']:.2f}% sparsity")
    assert refilled["test_acc_at_best_val"] >= dense - 2.0
    state_dict = load_file(str(save / "model_SA_best.pth.tar"))["state_dict"]
    assert all(is_channel_wise(v) for k, v in state_dict.items() if k.endswith("weight_mask"))
    # The export runs in a fresh, isolated interpreter that imports nothing of ours and unpickles no code.
    data = load_dataset("digits", "")
    torch.save(data.test.tensors[0], tmp_path / "images.pt")
    code = ("import sys, torch; model = torch.export.load(sys.argv[1]).module(); "
            "torch.save(model(torch.load(sys.argv[2], weights_only=True)).argmax(1), sys.argv[3]); "
            "assert not {'models', 'pruner', 'utils'} & {name.split('.')[0] for name in sys.modules}; "
            "print(sum(p.numel() for p in model.parameters()))")
    fresh = subprocess.run([sys.executable, "-I", "-c", code, str(save / "slim.pt2"), str(tmp_path / "images.pt"),
                            str(tmp_path / "predictions.pt")], cwd=tmp_path, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    predictions = torch.load(tmp_path / "predictions.pt", weights_only=True)
    accuracy = 100.0 * (predictions == data.test.tensors[1]).float().mean().item()
    assert abs(accuracy - refilled["test_acc_at_best_val"]) < 1e-3  # the slimmed model is the best checkpoint
    assert int(fresh.stdout.split()[-1]) < 272186  # res20s has 272,186 parameters
    # The ONNX file gives the same predictions in ONNX Runtime, at a batch size other than the traced one.
    code = ("import sys, numpy, onnxruntime; s = onnxruntime.InferenceSession(sys.argv[1]); "
            "x = numpy.load(sys.argv[2]); print(' '.join(str(int(v)) for v in s.run(None, {'images': x})[0].argmax(1)))")
    import numpy
    numpy.save(tmp_path / "images.npy", data.test.tensors[0].numpy())
    ort = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "slim.onnx"), str(tmp_path / "images.npy")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert ort.returncode == 0, ort.stderr
    assert [int(v) for v in ort.stdout.split()] == predictions.tolist()
    layers = json.loads((save / "summary.json").read_text())["layers"]
    assert all(v["kept_channels"] % 8 == 0 or v["kept_channels"] == v["channels"] for v in layers.values())
    assert any(v["kept_channels"] > v["kept_channels_unrounded"] for v in layers.values())
    assert "slimmed model exported to" in proc.stdout and "ONNX Runtime" in proc.stdout
    ev = run_script("main_eval_fillback.py", "--evaluate", "--checkpoint", save / "model_SA_best.pth.tar")
    assert ev.returncode == 0, ev.stderr
    assert f"test {refilled['test_acc_at_best_val']:.2f}%" in ev.stdout


def test_cut_off_retraining_resumes_from_its_save_dir_bit_exact(digits_imp_run, tmp_path):
    """`--resume` alone finds the run's checkpoint.pth.tar in --save_dir; one
    epoch then a resumed second equals two epochs in one go."""
    ck1 = str(digits_imp_run / "1checkpoint.pth.tar")
    common = ["--pretrained", ck1, "--mask_dir", ck1, "--save_model", "--seed", "3", "--decreasing_lr", "1"]

    def retrain(save, *extra):
        main_eval_fillback.main(main_eval_fillback.get_args_parser().parse_args(common + ["--save_dir", str(save), *extra]))
        return load_file(str(save / "checkpoint.pth.tar"))

    whole = retrain(tmp_path / "whole", "--epochs", "2")
    retrain(tmp_path / "cut", "--epochs", "1")
    resumed = retrain(tmp_path / "cut", "--epochs", "2", "--resume")
    assert resumed["epoch"] == 2 and resumed["result"] == whole["result"] | {"seconds": resumed["result"]["seconds"]}
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in whole["state_dict"].items())


def test_imp_refill_rounds_are_channel_wise(tmp_path):
    save = tmp_path / "imp_refill"
    proc = run_script("main_imp.py", "--epochs", "1", "--pruning_times", "3", "--fillback", "--criteria", "saliency",
                      "--fillback_rate", "0.1", "--round_to", "4", "--save_dir", save)
    assert proc.returncode == 0, proc.stderr
    for state in (1, 2):
        sd = load_file(str(save / f"{state}checkpoint.pth.tar"))["state_dict"]
        masks = {k: v for k, v in sd.items() if k.endswith("weight_mask")}
        assert masks and all(is_channel_wise(v) for v in masks.values())
        kept = [int(v.flatten(1).amax(1).sum()) for v in masks.values()]
        assert all(k % 4 == 0 or k == v.shape[0] for k, v in zip(kept, masks.values()))
    states = json.loads((save / "summary.json").read_text())["states"]
    layers = {k.removesuffix(".weight_mask") for k in masks}
    assert all(set(s["next_refill"]) == layers for s in states[:2])  # per layer k before and after rounding


def test_bad_input(tmp_path, cli_error):
    model = build_model("vgg16_bn", 10, 1, (0.3,), (0.2,))
    apply_mask(model, global_magnitude_prune(model, 0.2))
    foreign = tmp_path / "vgg.pth.tar"
    torch.save({"state_dict": model.state_dict()}, foreign)
    res = build_model("res20s", 10, 1, (0.3,), (0.2,))
    mask = global_magnitude_prune(res, 0.2)
    apply_mask(res, mask)
    good = tmp_path / "res.pth.tar"
    torch.save({"state_dict": res.state_dict(), "init_weight": None}, good)
    save = ["--save_dir", str(tmp_path / "out")]
    line = cli_error(main_eval_fillback, ["--mask_dir", str(foreign), "--prune-type", "trained"] + save)
    assert "--mask_dir" in line and "do not fit this architecture" in line
    line = cli_error(main_eval_fillback, ["--mask_dir", str(good), "--prune-type", "trained", "--criterion", "taylor"]
                     + save)
    assert "unknown refill criterion 'taylor'; valid: l1, l2, magnitude, remain, saliency" in line
    for rate in ("-0.1", "1.5"):
        line = cli_error(main_eval_fillback, ["--mask_dir", str(good), "--prune-type", "trained", "--fillback-rate", rate]
                         + save)
        assert "fill-back rate must be in [0, 1]" in line
    line = cli_error(main_eval_fillback, ["--mask_dir", str(good)] + save)
    assert "--pretrained" in line
    line = cli_error(main_eval_fillback, ["--mask_dir", str(good), "--prune-type", "trained", "--save_model",
                                          "--export_slim", str(tmp_path / "missing" / "slim.pt2")] + save)
    assert "--export_slim" in line and "cannot be written" in line
    line = cli_error(main_eval_fillback, ["--mask_dir", str(good), "--prune-type", "trained", "--save_model",
                                          "--export_onnx", str(tmp_path / "missing" / "slim.onnx")] + save)
    assert "--export_onnx" in line and "cannot be written" in line
    for bad in ("0", "-3"):
        line = cli_error(main_eval_fillback, ["--mask_dir", str(good), "--prune-type", "trained", "--round_to", bad]
                         + save)
        assert f"--round_to must be a positive whole number of channels (1 = no rounding), got {bad}" in line
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_criteria_that_score_on_images_say_so():
    """The lifecycle draws a training batch exactly for these (app.config.RefillConfig.apply)."""
    assert {name for name in CRITERIA if needs_batch(name)} == {"l1", "l2", "saliency"}


# ---- --refill_count original: the original code's rule ---------------------------------------------------------

def _original(scores, k, seed=0):
    whole, left = original_rule(torch.tensor(scores, dtype=torch.float32), k, torch.Generator().manual_seed(seed))
    return sorted(whole.tolist()), sorted(left.tolist())


def test_original_rule_keeps_k_plus_one_with_distinct_scores_and_the_paper_rule_k():
    scores = [0.5, 0.1, 0.9, 0.3, 0.7]
    # k = 2: t = the 3rd smallest score (0.5); above it 0.9 and 0.7, and the one channel at t
    assert _original(scores, 2) == ([0, 2, 4], [])
    assert _original(scores, 0) == ([2], [])  # t = the largest: just the channel at t
    assert _original(scores, 5) == ([0, 1, 2, 3, 4], [])  # k = c_out: every channel
    m = torch.zeros(5, 10)
    m.view(-1)[:25] = 1  # 2.5 channels' worth of weights: k = 2 either way
    assert original_count(m, 0.0) == kept_channels(m, 0.0) == 2
    paper = select_channels(torch.tensor(scores), m, 0.0)
    original = select_channels(torch.tensor(scores), m, 0.0, count="original", generator=torch.Generator())
    assert sorted(paper.whole.tolist()) == [2, 4] and paper.unrounded == 2
    assert sorted(original.whole.tolist()) == [0, 2, 4] and original.unrounded == 3
    assert original_count(torch.zeros(4, 10), 0.0) == 0 and kept_channels(torch.zeros(4, 10), 0.0) == 1


def test_original_rule_with_ties_by_hand():
    # k = 2 of 6: t = the 4th smallest of [0, 1, 2, 2, 2, 3] = 2; above it channel 4 (score 3); at t channels
    # 1, 2, 3, of which one is kept whole and two keep their unstructured rows
    whole, left = _original([1, 2, 2, 2, 3, 0], 2)
    assert len(whole) == 2 and 4 in whole and sorted(whole + left) == [1, 2, 3, 4]
    whole, left = _original([1, 1, 1, 1], 1)  # all tied: one whole, three left
    assert len(whole) == 1 and sorted(whole + left) == [0, 1, 2, 3]
    whole, left = _original([5, 5, 1, 1], 1)  # t = 5: nothing above, one of the two 5s
    assert len(whole) == 1 and whole[0] in (0, 1) and left == [1 - whole[0]]


def test_the_tie_pick_follows_the_seed():
    scores = [1.0] * 8
    assert all(_original(scores, 3, seed) == _original(scores, 3, seed) for seed in range(5))
    assert len({tuple(_original(scores, 3, seed)[0]) for seed in range(20)}) > 1
    m = torch.ones(8, 9)
    masks = [refilled_mask(Mask({"a": m}), {"a": select_channels(torch.tensor(scores), m, 0.0, count="original",
                                                                   generator=torch.Generator().manual_seed(7))})
             for _ in range(2)]
    assert torch.equal(masks[0]["a"], masks[1]["a"])


def test_round_to_on_top_of_the_original_count():
    torch.manual_seed(0)
    m = (torch.rand(64, 72) < 0.3).float()  # ~19 channels' worth
    scores = torch.randn(64)
    plain = select_channels(scores, m, 0.0, count="original", generator=torch.Generator())
    rounded = select_channels(scores, m, 0.0, round_to=16, count="original", generator=torch.Generator())
    assert plain.unrounded == rounded.unrounded == len(plain.whole) == original_count(m, 0.0) + 1
    assert len(rounded.whole) == -(-len(plain.whole) // 16) * 16
    assert set(plain.whole.tolist()) <= set(rounded.whole.tolist())
    order = torch.sort(scores, descending=True).indices.tolist()
    assert set(rounded.whole.tolist()) == set(order[:len(rounded.whole)])  # then the next best


def test_tied_channels_left_keep_their_rows_in_the_mask():
    m = torch.zeros(4, 6)
    m[:, :2] = 1  # every channel holds 2 weights: 'remain' ties everywhere
    layers = {"a": select_channels(m.sum(1), m, 0.0, count="original", generator=torch.Generator().manual_seed(1))}
    new = refilled_mask(Mask({"a": m}), layers)["a"]
    whole = layers["a"].whole.tolist()
    assert len(whole) == 1 and new[whole[0]].sum() == 6
    assert all(torch.equal(new[r], m[r]) for r in layers["a"].left.tolist())
    info = refill_layers_report(Mask({"a": m}), layers)["a"]
    assert (info["kept_channels"], info["tied_channels_left"]) == (1, 3)


def test_refill_count_flag(digits_imp_run, tmp_path, cli_error):
    ticket = str(digits_imp_run / "1checkpoint.pth.tar")
    base = ["--pretrained", ticket, "--mask_dir", ticket, "--epochs", "1"]
    assert cli_error(main_eval_fillback, base + ["--refill_count", "k+1", "--save_dir", str(tmp_path / "x")]) \
        .endswith("error: --refill_count must be one of paper, original, got 'k+1'")
    import main_imp
    assert cli_error(main_imp, ["--refill_count", "original", "--save_dir", str(tmp_path / "y")]) \
        .endswith("error: --refill_count original counts what --fillback keeps: add --fillback")
    proc = run_script("main_eval_fillback.py", *base, "--refill_count", "original", "--save_dir", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    assert "refill (magnitude, rate 0.0, round_to 1, count original):" in proc.stdout
    with open(tmp_path / "r" / "summary.json") as f:
        summary = json.load(f)
    assert summary["args"]["refill_count"] == "original"
    masks = {k[: -len(".weight_mask")]: v for k, v in load_file(ticket)["state_dict"].items() if k.endswith("_mask")}
    for name, info in summary["layers"].items():
        k = original_count(masks[name], 0.0)
        assert info["kept_channels"] == (k + 1 if k < info["channels"] else info["channels"]), name
