"""main_imp.py end to end: sparsity schedule, rewinding, files, the seed
README's command, bit-exact resume after SIGKILL, and bad input."""
import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main_imp
from conftest import ROOT, run_script
from models import build_model
from pruner.masking import effective_weights
import app.imp
from app.config import TrainConfig
from utils.checkpoint import load_file

FAST = ["--arch", "res20s", "--epochs", "2", "--batch_size", "128"]


def test_imp_sparsity_rewind_and_files(tmp_path, monkeypatch):
    save = tmp_path / "run"
    starts = {}
    real_train_state = app.imp.train_state

    def spy(model, data, args, device, *, state, **kw):
        if kw.get("resume") is None:
            starts[state] = effective_weights(model)
        return real_train_state(model, data, args, device, state=state, **kw)

    monkeypatch.setattr(app.imp, "train_state", spy)
    args = main_imp.get_args_parser().parse_args(
        FAST + ["--pruning_times", "3", "--prune_type", "rewind_lt", "--rewind_epoch", "1",
                "--save_dir", str(save), "--init", str(tmp_path / "init.pth.tar")])
    main_imp.main(args)

    for i in range(3):
        assert (save / f"{i}checkpoint.pth.tar").exists() and (save / f"{i}model_SA_best.pth.tar").exists()
    assert (save / "accuracy_per_epoch.png").exists() and (save / "accuracy_vs_sparsity.png").exists()
    summary = json.loads((save / "summary.json").read_text())
    sparsities = [s["sparsity"] for s in summary["states"]]
    for i, s in enumerate(sparsities):
        assert abs(s - (1 - 0.8 ** i)) < 1e-3
    assert all(s["test_acc_at_best_val"] is not None for s in summary["states"])

    ck = [load_file(str(save / f"{i}checkpoint.pth.tar")) for i in range(3)]
    assert set(ck[0]) >= {"state", "result", "epoch", "state_dict", "best_sa", "optimizer", "scheduler", "init_weight"}
    sd1, sd2 = ck[1]["state_dict"], ck[2]["state_dict"]
    assert "conv1.weight" in sd2 and "conv1.weight_mask" not in sd2  # stem dense
    assert "fc.weight" in sd2 and "fc.weight_mask" not in sd2  # classifier dense
    masks = [k for k in sd2 if k.endswith("weight_mask")]
    assert masks and all(torch.all(sd2[k] <= sd1[k]) for k in masks)  # pruned stays pruned

    rewind = ck[2]["init_weight"]
    init_file = torch.load(tmp_path / "init.pth.tar")
    assert not torch.equal(rewind["layer1.0.conv1.weight"], init_file["layer1.0.conv1.weight"])  # rewind_lt: epoch 1
    for state in (1, 2):
        mask_sd = ck[state]["state_dict"]
        for k in masks:
            layer = k[: -len("_mask")]
            m = mask_sd[k] > 0
            assert torch.equal(starts[state][layer][m], rewind[layer][m]), (state, layer)
            assert torch.all(starts[state][layer][~m] == 0)
    assert torch.equal(starts[0]["layer1.0.conv1.weight"], init_file["layer1.0.conv1.weight"])


def test_default_run_dense_accuracy_at_least_95(digits_imp_run):
    summary = json.loads((digits_imp_run / "summary.json").read_text())
    assert summary["states"][0]["sparsity"] == 0.0
    assert summary["states"][0]["test_acc_at_best_val"] >= 95.0


def test_seed_readme_imp_command_verbatim(seed_imp_run):
    cwd, proc = seed_imp_run
    assert proc.returncode == 0, proc.stderr
    run = cwd / "resnet18_cifar10_lt_0.2_s1_rewind_16"
    assert (run / "1checkpoint.pth.tar").exists()
    assert (cwd / "pretrained_model" / "res18_cifar10_1_init.pth.tar").exists()
    assert "state 1 done: sparsity 20.00%" in proc.stdout


RESUME_RUN = FAST[:2] + ["--epochs", "3", "--pruning_times", "3", "--prune_type", "rewind_lt",
                         "--rewind_epoch", "1", "--seed", "7"]


def _final_state(save):
    ck = load_file(str(save / "2checkpoint.pth.tar"))
    return ck["state_dict"], ck["result"]["val_acc"], ck["init_weight"]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_exact(tmp_path):
    straight = tmp_path / "straight"
    proc = run_script("main_imp.py", *RESUME_RUN, "--save_dir", straight)
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    # Kills on events, not after fixed delays (a delay that lands before a checkpoint on one CPU lands after the
    # run on another): as soon as the run holds its folder (before any checkpoint), as soon as state 0's first
    # checkpoint is on disk, then a moment after states 1 and 2 begin (inside training or a checkpoint write).
    kill_points = [(".run.lock", 0.0), ("0checkpoint.pth.tar", 0.0), ("1checkpoint.pth.tar", 0.3),
                   ("2checkpoint.pth.tar", 0.1)]
    kills = 0
    for name, delay in kill_points + [(None, None)]:
        resume = ["--resume"] if any(killed.glob("*checkpoint.pth.tar")) else []
        cmd = [sys.executable, os.path.join(ROOT, "main_imp.py"), *RESUME_RUN, "--save_dir", str(killed), *resume]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while name is not None and p.poll() is None and not (killed / name).exists():
            time.sleep(0.01)
        if name is not None and p.poll() is None:
            time.sleep(delay)
        if name is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=600)
        if name is None or p.returncode != -signal.SIGKILL:
            assert p.returncode == 0, p.stderr.read()
        for f in killed.glob("*.pth.tar"):  # every checkpoint on disk is complete
            load_file(str(f))
        if p.returncode == 0:  # finished (also where a fast machine ended the run before a late kill point)
            break
    assert kills >= 2  # the first two kill points come before the run can end
    a_sd, a_val, a_init = _final_state(straight)
    b_sd, b_val, b_init = _final_state(killed)
    assert a_sd.keys() == b_sd.keys()
    assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)
    assert all(torch.equal(a_init[k], b_init[k]) for k in a_init)
    assert a_val == b_val


def test_bad_input_one_line_errors(tmp_path, cli_error):
    cases = [
        (["--dataset", "cifar10", "--data", str(tmp_path / "nope")], "nope"),
        (["--arch", "resnet1000"], "unknown --arch 'resnet1000'; valid: mobilenet"),
        (["--dataset", "mnist"], "unknown --dataset 'mnist'; valid:"),
        (["--rate", "1.5"], "--rate must be in (0, 1)"),
        (["--rate", "0"], "--rate must be in (0, 1)"),
        (["--resume", "--save_dir", str(tmp_path / "empty")], "no --checkpoint given"),
        (["--prune_type", "pt"], "--pretrained"),
        (["--workers", "-1"], "--workers must be 0 or more, got -1"),
    ]
    for argv, expected in cases:
        line = cli_error(main_imp, argv + ["--save_dir", str(tmp_path / "s")] if "--save_dir" not in argv else argv)
        assert expected in line, (argv, line)

    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_text("not a checkpoint")
    assert "not a readable PyTorch file" in cli_error(main_imp, ["--resume", "--checkpoint", str(garbage)])

    vgg_init = tmp_path / "vgg_init.pth.tar"
    torch.save(build_model("vgg16_bn", 10, 1, (0.3,), (0.2,)).state_dict(), vgg_init)
    line = cli_error(main_imp, ["--init", str(vgg_init), "--save_dir", str(tmp_path / "v")])
    assert re.search(r"--init file '.*vgg_init.pth.tar' holds weights that do not fit this architecture "
                     r"\(missing .*\): another architecture or dataset\?$", line)


@pytest.mark.parametrize("cores, device, local_ranks, workers", [({0, 1}, "cuda", 1, 2), (set(range(16)), "cuda", 1, 16),
                                                                  (set(range(16)), "cuda", 8, 2),
                                                                  (set(range(16)), "cpu", 1, 1)])
def test_per_image_workers_default_to_the_cores_of_a_gpu(monkeypatch, cores, device, local_ranks, workers):
    """On CUDA the per-image path takes every usable core, shared among the node's ranks; on the CPU one."""
    from app.batches import default_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    assert default_workers(torch.device(device), local_ranks) == workers
    assert TrainConfig.from_args(main_imp.get_args_parser().parse_args(["--dataset", "cifar10"])).workers is None


def test_existing_run_is_never_overwritten(tmp_path, cli_error):
    save = tmp_path / "run"
    save.mkdir()
    (save / "0checkpoint.pth.tar").write_bytes(b"precious")
    line = cli_error(main_imp, ["--save_dir", str(save)])
    assert "already holds a run" in line and "--resume" in line
    assert (save / "0checkpoint.pth.tar").read_bytes() == b"precious"
