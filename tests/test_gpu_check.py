"""profile/gpu_check.py without a GPU: the CPU rehearsal runs every section
through the same code at tiny sizes, writes the report files and prints the
plan of the real run; deadlines skip units and say so; the end-to-end
candidates it times on a GPU (permuted grouped convolutions, torch.compile)
give the masked model's outputs on the CPU."""
import json

import pytest
import torch

from bench.budget import Budget, Section, Unit, plan_text
from conftest import load_script, run_script

gpu_check = load_script("profile/gpu_check.py")


def test_the_rehearsal_runs_every_section_and_prints_the_plan(tmp_path):
    out = tmp_path / "check"
    proc = run_script("profile/gpu_check.py", "--rehearse", "--quick", "--out", out, timeout=300,
                      env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = proc.stdout.split("\n\n")[0]
    assert plan.startswith("plan of the GPU run") and "total ~" in plan
    for section in ("(a) kernels against F.conv2d", "(b) regrouped layers", "(c) whole networks", "(d) training"):
        assert section in plan
    assert "res18 32x32" in plan and "parts 128" in plan and "torch.compile" in plan  # the real run's shapes
    report = json.loads((out / "report.json").read_text())
    assert report["rehearsal"] and report["tile_variant"]["ok"]
    for name in ("check", "layers", "end_to_end", "training"):
        assert report[name]["rows"] and not report[name]["errors"], name
        assert report[name]["budget"]["clock"] == "estimates (rehearsal)"
    assert all(row["ok"] for row in report["check"]["rows"])
    forms = {row["form"] for row in report["end_to_end"]["rows"]}
    assert {"dense", "slimmed refill", "slimmed refill, round 8", "permuted (grouped convolutions)",
            "regrouped (CPU path, per-layer choice)"} <= forms
    assert {row["runtime"] for row in report["end_to_end"]["rows"]} == {"torch", "compile"}
    epochs = {(row["variant"], row["path"]) for row in report["training"]["rows"] if row.get("epoch")}
    assert {("dense", "device-resident"), ("masked (80%)", "device-resident"), ("dense", "step alone")} <= epochs
    assert any(path.startswith("per-image") for _, path in epochs)
    text = (out / "report.md").read_text()
    assert "CPU rehearsal" in text and "not in the rehearsal: CUDA C kernel" in text and "| Triton/cuDNN |" in text


def test_the_full_plan_covers_the_questions_of_the_next_gpu_window():
    """Without --quick: ResNet-50's 3x3 layers at 224x224 and CIFAR ResNet-18's, parts of 32-128 rows; end to end
    at batch 1, 64, 256 and ResNet-50 at 224x224; compiled forms; training throughput; under 6 minutes."""
    args = gpu_check.get_args_parser().parse_args(["--out", "x"])
    sections = gpu_check.build_sections(args, rehearse=False)[0]
    text = "\n".join(plan_text([section for _, section, _ in sections]))
    for expected in ("res50 224x224 80% batch 64 layer3.1.conv2 parts 128 bf16", "res18 32x32 98% batch 64 "
                     "layer4.1.conv1 parts 32 bf16", "res18 32x32 batch 1 bf16", "res18 32x32 batch 256 bf16",
                     "res50 224x224 batch 64 bf16: 6 forms", "torch.compile of dense, slimmed, permuted",
                     "masked res18 32x32 batch 128, AMP, channels-last, torch.compile"):
        assert expected in text, expected
    training = next(section for _, section, _ in sections if section.name == "d")
    fitting = [unit.what for unit, fits in training.planned() if fits]
    for expected in ("res18 32x32 batch 128, 5000 synthetic CIFAR images: step alone, per-image and device-resident",
                     "res18 32x32 batch 512, 5000 synthetic CIFAR", "res50 224x224 batch 128, 512 synthetic JPEGs"):
        assert any(what.startswith(expected) for what in fitting), expected  # the epochs fit (d)'s deadline
    assert sum(section.deadline for _, section, _ in sections) + gpu_check.TILE_SMOKE_TIMEOUT <= 6 * 60
    assert all(section.estimated() <= section.deadline for _, section, _ in sections)


def test_a_deadline_skips_units_and_the_report_says_so(tmp_path, capsys):
    ran = []
    units = [Unit(f"unit {i}", "e2e form") for i in range(3)]
    section = Section("c", "whole networks", 0.0, units)
    assert all(not fits for _, fits in section.planned())
    report = gpu_check.Report(str(tmp_path))
    report.run_section("end_to_end", section, [(u, lambda i=i: ran.append(i) or [{"i": i}])
                                               for i, u in enumerate(units)], rehearse=True)
    assert ran == [] and report.data["end_to_end"]["budget"]["skipped"] == ["unit 0", "unit 1", "unit 2"]
    assert "3 of 3 units skipped: the 0 s deadline of (c)" in capsys.readouterr().out
    assert "end_to_end: 3 of 3 units skipped" in gpu_check.markdown(report.data, gpu_check.get_args_parser()
                                                                     .parse_args(["--out", "x"]))
    budget = Budget(Section("b", "layers", 5.0, units), rehearsal=True)  # the stand-in clock charges estimates
    taken = [budget.admit(u) and (budget.done(u) or True) for u in units]
    assert taken == [True, True, False] and budget.spent == pytest.approx(2 * units[0].seconds)
    assert "[beyond the deadline: skipped]" in "\n".join(plan_text([Section("b", "layers", 5.0, units)]))


def test_deadline_flags(cli_error):
    args = gpu_check.get_args_parser().parse_args(["--out", "x", "--deadline", "layers=0", "check=12.5"])
    assert gpu_check.deadlines(args)["layers"] == 0 and gpu_check.deadlines(args)["check"] == 12.5
    line = cli_error(gpu_check, ["--rehearse", "--out", "x", "--deadline", "layer=3"])
    assert "--deadline takes SECTION=SECONDS" in line and "got 'layer=3'" in line


@pytest.mark.parametrize("arch, image", [("res18", 8), ("res50", 32)])
def test_permuted_and_compiled_candidates_equal_the_masked_model(arch, image):
    """What section (c) times on a GPU, checked on the CPU: the permuted
    grouped-convolution model and the torch.compile'd forms (dynamo and
    AOTAutograd, the stages before inductor's code generation) give the
    outputs of the masked model they implement."""
    from app.config import RegroupConfig
    from bench.network import generated_ticket, refill_form, regroup_form
    _, masked, mask = generated_ticket(arch, 0.8, 1000 if arch == "res50" else 10, imagenet_stem=image >= 64)
    shape = (3, image, image)
    permuted, _, _ = regroup_form(masked, mask, RegroupConfig(cn="auto", regroup_unit="channel"), "permuted", shape)
    slimmed, _ = refill_form(masked, mask)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        for form in (permuted, slimmed):
            expected = form.implements(x)
            assert (form.model(x) - expected).abs().max().item() < 1e-4
            compiled = torch.compile(form.model, backend="aot_eager")
            assert (compiled(x) - expected).abs().max().item() < 1e-4
