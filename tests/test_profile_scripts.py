"""profile/ scripts that need no GPU: splitting a ticket into layer files and
timing a layer through the vendor convolution, with their bad-input errors."""
import json
import os
import re

import pytest
import torch

from conftest import load_script, run_script


def test_split_writes_one_masked_weight_per_layer_with_geometry(digits_imp_run, tmp_path):
    ckpt = digits_imp_run / "1checkpoint.pth.tar"
    proc = run_script("profile/regroup_conv/split.py", ckpt, tmp_path / "layers")
    assert proc.returncode == 0, proc.stderr
    files = sorted(os.listdir(tmp_path / "layers"))
    sd = torch.load(ckpt, weights_only=False)["state_dict"]
    masked = sorted(k[: -len(".weight_mask")] + ".pth.tar" for k in sd if k.endswith(".weight_mask"))
    assert files == masked
    rec = torch.load(tmp_path / "layers" / "layer2.0.conv1.pth.tar", weights_only=False)
    assert torch.equal(rec["weight"], sd["layer2.0.conv1.weight_orig"] * sd["layer2.0.conv1.weight_mask"])
    assert rec["stride"] == (2, 2) and rec["padding"] == (1, 1) and rec["input_hw"] == (8, 8)  # digits: 8x8 input

    timed = run_script("profile/cudnn_conv/conv.py", "--kernel_file", tmp_path / "layers" / "layer2.0.conv1.pth.tar",
                       "--batch_size", "3", "--repeats", "3")
    assert timed.returncode == 0, timed.stderr
    assert "input (3, 16, 8, 8), stride (2, 2), padding (1, 1)" in timed.stdout and "median" in timed.stdout


def test_bad_kernel_files_and_shapes(tmp_path, cli_error):
    conv = load_script("profile/cudnn_conv/conv.py")
    flat = tmp_path / "flat.pth.tar"
    torch.save({"weight": torch.ones(8, 9)}, flat)
    assert "does not hold a 4-D conv weight (got (8, 9))" in cli_error(conv, ["--kernel_file", str(flat)])
    good = tmp_path / "good.pth.tar"
    torch.save({"weight": torch.ones(8, 4, 3, 3)}, good)
    line = cli_error(conv, ["--kernel_file", str(good), "--input_height", "2", "--vertical_padding", "0"])
    assert "does not fit a 2x32 input" in line
    assert "not found" in cli_error(conv, ["--kernel_file", str(tmp_path / "missing.pth.tar")])
    split = load_script("profile/regroup_conv/split.py")
    assert "holds no masks" in cli_error(split, [str(good), str(tmp_path / "out")])


def test_regroup_conv_cpu_path_checks_and_times_a_layer(tmp_path, cli_error):
    conv = load_script("profile/regroup_conv/conv.py")
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 3, 3, generator=g) * (torch.rand(64, 32, 3, 3, generator=g) > 0.7)
    layer = tmp_path / "layer.pth.tar"
    torch.save({"weight": weight, "stride": (1, 1), "padding": (1, 1), "input_hw": (8, 8)}, layer)
    proc = run_script("profile/regroup_conv/conv.py", "--kernel_file", layer, "--b2", "4", "--batch_size", "5",
                      "--repeats", "3", "--regroup_unit", "channel")
    assert proc.returncode == 0, proc.stderr
    assert "relative error" in proc.stdout and "CPU path" in proc.stdout and "speedup" in proc.stdout
    line = cli_error(conv, ["--kernel_file", str(layer)])  # 64 rows in 8 parts of 8: none above b2 = 16
    assert "no dense block" in line
    flat = tmp_path / "flat.pth.tar"
    torch.save(torch.ones(3, 3), flat)
    assert "does not hold a 4-D conv weight" in cli_error(conv, ["--kernel_file", str(flat)])
    assert "does not fit" in cli_error(conv, ["--kernel_file", str(layer), "--input_width", "1",
                                              "--horizontal_padding", "0"])


def _table_rows(stdout):
    """{form: [columns]} of end_to_end.py's table rows (one batch size)."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and "torch" in parts:
            at = parts.index("torch")
            rows[" ".join(parts[1:at])] = parts[at + 1:]
    return rows


def test_end_to_end_checks_every_structured_variant(digits_imp_run):
    proc = run_script("profile/end_to_end.py", digits_imp_run / "1checkpoint.pth.tar", "--image_size", "8",
                      "--batch_size", "16", "--repeats", "2", "--b2", "4")
    assert proc.returncode == 0, proc.stderr
    rows = _table_rows(proc.stdout)
    assert set(rows) == {"dense", "dense, BN folded", "masked (unstructured)", "slimmed refill", "regrouped (channel)"}
    for name in ("dense, BN folded", "slimmed refill", "regrouped (channel)"):  # checked against what each implements
        assert float(rows[name][-1]) < 1e-3
    assert rows["dense"][1] == "ref" and rows["dense"][-1] == "ref" and rows["masked (unstructured)"][-1] == "ref"
    assert "nan" not in proc.stdout
    assert "% sparse) | ticket sparsity" not in proc.stdout and "layers with blocks" in proc.stdout
    assert re.search(r"regrouped \(channel\): [\d.]+x over dense, BN folded, executed FLOPs ratio [\d.]+x \([\d.]+ of it\)",
                     proc.stdout)


def test_end_to_end_draws_and_writes_the_rows_it_prints(tmp_path):
    """Generated tickets (no checkpoint), two batch sizes: the PNG and the
    JSON hold the printed rows; speedups paired within their p10-p90."""
    plot, out = tmp_path / "speedup.png", tmp_path / "rows.json"
    proc = run_script("profile/end_to_end.py", "--arch", "res20s", "--sparsity", "0.8", "0.9", "--batch_size", "2", "4",
                      "--image_size", "8", "--repeats", "3", "--b2", "4", "--round_to", "8", "--plot", plot, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "nan" not in proc.stdout
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert {r["ticket"] for r in rows} == {"res20s 80% sparse", "res20s 90% sparse"}
    assert {r["batch"] for r in rows} == {2, 4}
    forms = {"dense", "dense, BN folded", "masked (unstructured)", "slimmed refill", "slimmed refill, round 8",
             "regrouped (channel)"}
    assert {r["form"] for r in rows} == forms and len(rows) == 2 * 2 * len(forms)
    printed = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0] in ("2", "4")]
    assert len(printed) == len(rows)
    for row, line in zip(rows, printed):  # the JSON's rows are the printed rows, in order
        assert int(line[0]) == row["batch"] and f"{row['ms']:.2f}" in line
        if row["speedup"] is not None:
            assert f"{row['speedup']:.2f}x" in line and row["speedup_p10"] <= row["speedup"] <= row["speedup_p90"]
        assert f"{row['flops_ratio']:.2f}x" in line
    slimmed = [r for r in rows if r["form"] == "slimmed refill"]
    assert all(r["baseline"] == "dense, BN folded" and r["flops_ratio"] > 1 and r["structured"] for r in slimmed)


def test_presets_take_their_rows_from_the_shared_measure(monkeypatch):
    """slim_speed, cpu_speed and onnx_speed time through bench.network.measure:
    every row they report comes from its calls."""
    import bench.network
    real, made = bench.network.measure, []

    def spy(*args, **kwargs):
        rows = real(*args, **kwargs)
        made.extend(rows)
        return rows
    monkeypatch.setattr(bench.network, "measure", spy)
    slim_speed = load_script("profile/slim_speed.py")
    rows = slim_speed.main(slim_speed.get_args_parser().parse_args(
        ["--arch", "res20s", "--batch_size", "2", "--image_size", "8", "--sparsity", "0.5", "--repeats", "2"]))
    assert rows == made and {r["form"] for r in rows} == {"dense, BN folded", "refill"}
    made.clear()
    cpu_speed = load_script("profile/regroup_conv/cpu_speed.py")
    results = cpu_speed.main(cpu_speed.get_args_parser().parse_args(
        ["--arch", "res20s", "--batch_size", "2", "--image_size", "8", "--sparsity", "0.9", "--repeats", "1",
         "--cn", "auto", "--b2", "4"]))
    eager = results["runs"][0]["eager"]
    assert eager["ms"] == {r["form"]: r["ms"] for r in made}
    assert eager["speedup"] == next(r["speedup"] for r in made if r["form"] == "regrouped")
    made.clear()
    onnx_speed = load_script("profile/onnx_speed.py")
    reported = onnx_speed.main(onnx_speed.get_args_parser().parse_args(
        ["--arch", "res20s", "--sparsity", "0.8", "--batch_size", "2", "--image_size", "8", "--repeats", "1",
         "--b2", "4"]))
    for row in reported:
        same = {r["runtime"]: r for r in made if r["form"] == row["model"] and r["batch"] == row["batch"]}
        assert row["PyTorch"]["ms"] == same["torch"]["ms"] and row["ORT CPU"]["ms"] == same["onnxruntime"]["ms"]


def test_bf16_on_the_cpu_needs_native_bf16_and_is_checked_against_fp32(monkeypatch, capsys, cli_error, tmp_path):
    import bench.network
    from utils.runtime import native_bf16
    end_to_end = load_script("profile/end_to_end.py")
    argv = ["--arch", "res20s", "--sparsity", "0.8", "--batch_size", "16", "--image_size", "8", "--repeats", "1",
            "--b2", "4", "--dtype", "bf16"]
    monkeypatch.setattr(bench.network, "native_bf16", lambda: None)
    assert "--dtype bf16: this CPU has no native bf16" in cli_error(end_to_end, argv)
    monkeypatch.setattr(bench.network, "native_bf16", lambda: "amx_bf16")
    rows = end_to_end.main(end_to_end.get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert "dtype bf16 (native: amx_bf16)" in out and "nan" not in out
    assert all(r["dtype"] == "bf16" and r["bf16_argmax_agreement"] >= 0.99 and "refused" not in r for r in rows)
    monkeypatch.setattr(bench.network, "MIN_AGREEMENT", 1.01)  # no form can agree on more than all of the batch
    rows = end_to_end.main(end_to_end.get_args_parser().parse_args(argv))
    assert all("refused" in r and "ms" not in r for r in rows)
    assert "not timed" in capsys.readouterr().out
    for flags, expected in (("fpu sse avx2", None), ("fpu avx512f avx512_bf16", "avx512_bf16"),
                            ("fpu amx_tile amx_bf16", "amx_bf16")):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert native_bf16(str(cpuinfo)) == expected
    assert native_bf16(str(tmp_path / "absent")) is None


def test_mask_pictures(digits_imp_run, tmp_path, cli_error):
    out = tmp_path / "masks.png"
    proc = run_script("experiments/mask_pictures.py", digits_imp_run / "1checkpoint.pth.tar", "--layer",
                      "layer3.0.conv2", "--b2", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "8 blocks" in proc.stdout
    pictures = load_script("experiments/mask_pictures.py")
    line = cli_error(pictures, [str(digits_imp_run / "1checkpoint.pth.tar"), "--layer", "fc", "--out", str(out)])
    assert "no masked layer 'fc'" in line


def test_slim_speed_and_cpu_speed_report_equal_outputs_and_ratios():
    """Both CPU benchmarks on small inputs: every row checked (max |diff| 0
    within float noise), ratios and the conv/rest split printed; slim_speed
    times the inference form by default, BatchNorm folded on both sides (the
    folded slimmed models are checked against the masked ones like the
    others), and --no-fold_bn keeps the BatchNorm layers."""
    parser = load_script("profile/slim_speed.py").get_args_parser()
    assert parser.parse_args([]).fold_bn and not parser.parse_args(["--no-fold_bn"]).fold_bn
    slim_speed = run_script("profile/slim_speed.py", "--arch", "res20s", "--batch_size", "8", "--image_size", "8",
                            "--sparsity", "0.5", "--repeats", "2", "--round_to", "8")
    assert slim_speed.returncode == 0, slim_speed.stderr
    lines = slim_speed.stdout.splitlines()
    assert "CPU: " in lines[0] and "AVX" in lines[0]  # the CPU model and vector instructions it ran on
    assert "BatchNorm folded on both sides" in lines[0]
    table = lines[2:5]
    labels = [re.search(r"% (refill|round 8, same weights|round 8) ", row).group(1) for row in table]
    assert labels == ["refill", "round 8", "round 8, same weights"]
    rows = [row.split("%", 1)[1].replace(labels[i], "", 1).split() for i, row in enumerate(table)]
    weights = [int(row[0].replace(",", "")) for row in rows]
    assert weights[1] > weights[0] >= weights[2]  # rounding adds weights; the matched ticket holds no more
    assert all(float(row[-1]) < 1e-4 and row[4].endswith("x") and row[6].endswith("x") for row in rows)
    for row in rows:  # speedup: median of the rounds' dense/slim ratios, inside its p10-p90
        speedup, (p10, p90), flops_ratio = float(row[4][:-1]), map(float, row[5].split("-")), float(row[6][:-1])
        # speedup/FLOPs from the printed (two-decimal) figures, within what their rounding allows
        assert p10 <= speedup <= p90 and abs(float(row[7]) - speedup / flops_ratio) <= 0.011 + 0.006 * speedup / flops_ratio
    split = next(line for line in lines[6:] if "refill" in line).split()
    assert float(split[2]) > 0 and float(split[3]) > 0  # dense and slim conv milliseconds
    assert "GPU" not in slim_speed.stderr  # no profiler start-up noise



CPU_SPEED_CASE = ["--arch", "res20s", "--batch_size", "4", "--image_size", "16", "--sparsity", "0.9", "--repeats", "1",
                  "--cn", "auto", "--b2", "4"]


def _executed_is_dense_less_grouped_savings(run):
    """The executed FLOPs are the dense model's less, for each layer run
    grouped, its dense FLOPs less its grouped FLOPs: folding a permutation
    adds none (per image, MFLOPs)."""
    saved = sum(layer["dense_mflops"] - layer["grouped_mflops"] for layer in run["layers"].values()
                if layer["form"] == "grouped")
    assert run["executed_mflops"] == pytest.approx(run["dense_mflops"] - saved, rel=1e-9)
    # the ratio is taken from FLOP counts, the JSON holds them in MFLOPs: equal up to rounding of the division
    assert run["executed_flops_ratio"] == pytest.approx(run["dense_mflops"] / run["executed_mflops"], rel=1e-12)


def test_cpu_speed_runs_every_layer_regrouped_or_faster_dense(tmp_path, cli_error):
    """A real run: every output checked, the per-layer choice made by
    kernels.permuted.grouped_wins from the times it recorded, and the executed
    FLOPs accounted layer by layer whichever way the timings fell."""
    from kernels.permuted import grouped_wins
    out = tmp_path / "cpu_speed.json"
    proc = run_script("profile/regroup_conv/cpu_speed.py", *CPU_SPEED_CASE, "--out", out)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert set(run["eager"]["ms"]) == {"dense", "dense, BN folded", "regrouped", "slimmed refill"}
    assert set(run["max_abs_diff"]) == {"dense, BN folded", "regrouped", "slimmed refill"}
    assert all(diff < 1e-4 for diff in run["max_abs_diff"].values())
    eager = run["eager"]  # speedups paired round by round, inside their spread
    assert eager["speedup_p10"] <= eager["speedup"] <= eager["speedup_p90"] and eager["slimmed_speedup"] > 0
    assert 0.95 < run["share_in_layers_with_blocks"] < 1  # --cn auto: every pruned layer (not the stem, the classifier)
    _executed_is_dense_less_grouped_savings(run)
    for name, layer in run["layers"].items():
        assert layer["form"] in ("grouped", "dense (faster)", "dense (more FLOPs grouped)"), name
        chosen = grouped_wins(layer["dense_ms"], layer["grouped_ms"], layer["flops_ratio"])
        assert (layer["form"] == "grouped") == chosen, name
    assert "of it | slimmed refill" in proc.stdout and "20/20 layers with blocks" in proc.stdout
    cpu_speed = load_script("profile/regroup_conv/cpu_speed.py")
    assert "got 'abc'" in cli_error(cpu_speed, ["--cn", "abc"])


@pytest.mark.parametrize("rows", [8, 16], ids=["AVX2 rows", "AVX-512 rows"])
@pytest.mark.parametrize("clock", ["grouped 2x faster", "grouped 5% faster", "dense faster"])
def test_cpu_speed_flops_with_the_per_layer_choice_forced(monkeypatch, clock, rows):
    """The case of the real run with an injected clock and the rows per
    group of either vector unit fixed (with 16, res20s's
    layer3.0.downsample.0 pads to more FLOPs grouped than dense): every
    layer timed 2x faster grouped runs grouped; 5% faster, only those whose
    groups execute fewer FLOPs than dense do (a form with more needs a 10%
    margin), so the executed FLOPs are fewer than dense; dense faster, none
    does and the executed FLOPs equal dense."""
    import kernels.permuted
    times = {"grouped 2x faster": {"grouped": 1.0, "dense": 2.0}, "grouped 5% faster": {"grouped": 0.95, "dense": 1.0},
             "dense faster": {"grouped": 2.0, "dense": 1.0}}[clock]
    monkeypatch.setattr(kernels.permuted, "alternating_medians", lambda fns, *a, **k: dict(times))
    monkeypatch.setattr(kernels.permuted, "vector_rows", lambda: rows)
    cpu_speed = load_script("profile/regroup_conv/cpu_speed.py")
    run = cpu_speed.main(cpu_speed.get_args_parser().parse_args(CPU_SPEED_CASE))["runs"][0]
    layers = run["layers"].values()
    more_flops = [layer["flops_ratio"] < 1 for layer in layers]
    assert any(more_flops) == (rows == 16)
    if clock == "grouped 2x faster":
        assert all(layer["form"] == "grouped" for layer in layers)
    elif clock == "grouped 5% faster":
        assert [layer["form"] for layer in layers] == ["dense (more FLOPs grouped)" if more else "grouped"
                                                      for more in more_flops]
        assert run["executed_flops_ratio"] > 1.2
    else:
        assert all(layer["form"] == "dense (faster)" for layer in layers)
        assert run["executed_flops_ratio"] == pytest.approx(1, rel=1e-12)
    _executed_is_dense_less_grouped_savings(run)
    assert all(diff < 1e-4 for diff in run["max_abs_diff"].values())


def test_a_grouped_form_with_more_flops_than_dense_needs_a_margin():
    """grouped_wins: no slower is enough where grouping saves FLOPs; where
    padding makes it execute more, it must be 10% faster."""
    from kernels.permuted import MORE_FLOPS_MARGIN, grouped_wins
    assert MORE_FLOPS_MARGIN == 0.10
    assert grouped_wins(1.0, 1.0, 1.5) and not grouped_wins(1.0, 1.01, 1.5)
    assert not grouped_wins(1.0, 0.95, 0.9) and not grouped_wins(1.0, 1.0, 0.9) and grouped_wins(1.0, 0.9, 0.9)


def test_a_wider_grouped_producer_gathers_back_before_a_dense_consumer():
    """A grouped layer whose padded slots outnumber its channels, followed
    by a conv kept dense: the consumer keeps its input width (reading the
    slots would add FLOPs) and the output still equals the masked model's."""
    from app.config import RegroupConfig
    from bench.network import generated_ticket
    from kernels.permuted import permuted_model
    from pruner.masking import apply_mask
    _, masked, mask = generated_ticket("res20s", 0.9)
    regrouped, _ = RegroupConfig(cn="auto", b2=4, regroup_unit="channel", seed=0).regroup(mask)
    apply_mask(masked, regrouped)
    masked.eval()
    x = torch.rand(2, 3, 16, 16)
    deployed, layers, folded = permuted_model(masked, "auto", 4, dense_layers=("layer3.1.conv2",))
    producer, consumer = deployed.layer3[1].convs[0], deployed.layer3[1].convs[1]
    assert producer.slots > 64 and producer.out_index is not None  # wider than its 64 channels: gathered back
    assert consumer.in_channels == 64 and ("layer3.1.conv1", "layer3.1.conv2") not in folded
    with torch.no_grad():
        assert (deployed(x) - masked(x)).abs().max() < 1e-4


def test_gpu_scripts_stop_with_one_line_without_a_gpu(tmp_path):
    """profile/gpu_check.py and kernel_sweep.py need CUDA: one line, exit 2, nothing written."""
    for script, args in [("profile/gpu_check.py", ["--out", tmp_path / "check"]),
                         ("profile/regroup_conv/kernel_sweep.py", [])]:
        proc = run_script(script, *args, env={"CUDA_VISIBLE_DEVICES": ""})
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "CUDA GPU" in lines[0], proc.stderr
    assert not (tmp_path / "check").exists()


def test_layer_and_network_scripts_refuse_gpu_precisions_on_the_cpu(digits_imp_run, tmp_path, cli_error):
    conv = load_script("profile/regroup_conv/conv.py")
    g = torch.Generator().manual_seed(0)
    layer = tmp_path / "layer.pth.tar"
    torch.save({"weight": torch.randn(64, 32, 3, 3, generator=g) * (torch.rand(64, 32, 3, 3, generator=g) > 0.7),
                "input_hw": (6, 6)}, layer)
    line = cli_error(conv, ["--kernel_file", str(layer), "--b2", "4", "--dtype", "bf16", "--batch_size", "2"])
    assert "--dtype bf16: the CPU path computes in fp32" in line
    end_to_end = load_script("profile/end_to_end.py")
    line = cli_error(end_to_end, [str(digits_imp_run / "1checkpoint.pth.tar"), "--image_size", "8", "--dtype", "tf32"])
    assert "--dtype tf32: the CPU paths compute in fp32 or, with native bf16, bf16" in line
    assert "must be at least 1" in cli_error(end_to_end, [str(digits_imp_run / "1checkpoint.pth.tar"), "--batch_size", "0"])


def test_gpu_report_names_the_triton_variant_and_the_sweep_reads_variants():
    """What a GPU session reads back: gpu_check's layer table says which
    variant and tiles the tuner chose; kernel_sweep takes a variant per
    configuration and refuses a bad one in one line."""
    import pytest
    from utils.errors import InvalidInput
    sweep = load_script("profile/regroup_conv/kernel_sweep.py")
    assert sweep.parse_configs(["128,4,3,tile", "64,4,2"]) == [
        {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3, "variant": "tile"},
        {"BLOCK_M": 64, "num_warps": 4, "num_stages": 2, "variant": "gather"}]
    for bad in ["128,4", "128,4,3,fast", "a,4,3", "128,4,3,tile,1"]:
        with pytest.raises(InvalidInput, match=f"BLOCK_M,WARPS,STAGES\\[,VARIANT\\] .*got '{re.escape(bad)}'"):
            sweep.parse_configs([bad])
    gpu_check = load_script("profile/gpu_check.py")
    args = gpu_check.get_args_parser().parse_args(["--out", "unused"])
    assert args.regroup_unit == "channel"
    timing = {"ms": 0.01, "p10": 0.009, "p90": 0.011}
    row = {"ticket": "res18 32x32 98%", "precision": "bf16", "layer": "layer3.0.conv2", "kernel_size": 3,
           "parts_rows": 64, "density": 0.25, "blocks": 14, "cudnn": timing, "triton": dict(timing, vs_cudnn=0.5, config={
               "BLOCK_M": 128, "num_warps": 4, "num_stages": 3, "variant": "tile"})}
    text = gpu_check.markdown({"versions": {"gpu": "test"}, "layers": {"rows": [row]}}, args)
    assert "| 0.50 | tile 128/4/3 | Triton |" in text and text.count("| Triton |") == 1
    failed = gpu_check.markdown({"versions": {"gpu": "test"}, "tile_variant": {"ok": False, "output": "CompilationError"}},
                                args)
    assert "Tile variant smoke check: FAILED, so this run used the gather variant only: CompilationError" in failed


def test_alternating_samples_run_in_turn_and_speedups_pair_rounds():
    """The benchmarks' timing: one call of each callable per round, in order,
    after the warm-up; the speedup is taken round by round, so a spell that
    slows both calls of a round (round 2 here, 3x) leaves the ratio alone."""
    from utils.timing import alternating_samples, paired_speedup, summary
    calls = []
    samples = alternating_samples({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4 and all(len(t) == 3 and min(t) >= 0 for t in samples.values())
    spell = {"dense": [0.75, 2.25, 0.75, 1.5, 0.75], "slim": [0.25, 0.75, 0.375, 0.5, 0.25]}  # seconds, exact in binary
    assert paired_speedup(spell, "dense", "slim") == summary([3.0, 3.0, 2.0, 3.0, 3.0])
    assert paired_speedup(spell, "dense", "slim")["median"] == 3.0  # the ratio of the two medians: 0.75 / 0.375 = 2
