"""torchrun/DDP on the CPU (gloo, 2 ranks), resume after killing the whole
job, and the fault cases: non-finite loss, unwritable or full --save_dir."""
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import main_imp
from conftest import ROOT
from pruner.mask import Mask
from utils.checkpoint import load_file
from app.config import TrainConfig
from app.datasets import DataSplits, load_dataset
from app.distributed import mask_digest
from utils.errors import TrainingDiverged
from app.training import train_state

DDP_RUN = ["--epochs", "2", "--pruning_times", "3", "--seed", "3"]


def torchrun(*args, script="main_imp.py", **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def process_tree(pid):
    """pid and all its descendants (torchrun starts each rank in a session of its own)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def final_mask_digest(save):
    return mask_digest(Mask.from_state_dict(load_file(str(save / "2checkpoint.pth.tar"))["state_dict"]))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun(*DDP_RUN, "--save_dir", save)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return save, out, err


def test_ddp_evaluation_is_that_of_rank_0s_checkpoint_alone(ddp_run):
    """Every rank evaluates with rank 0's BatchNorm statistics: the accuracy
    the run reports for its last epoch is what rank 0's checkpoint scores
    evaluated in one process."""
    from app.batches import DeviceBatches
    from app.training import evaluate
    from models import build_model
    from pruner.masking import load_weights
    save, _, _ = ddp_run
    data = load_dataset("digits", "")
    ck = load_file(str(save / "2checkpoint.pth.tar"))
    model = build_model("res20s", 10, 1, data.spec.mean, data.spec.std)
    load_weights(model, ck["state_dict"])
    cpu = torch.device("cpu")
    for split, key in ((data.val, "val_acc"), (data.test, "test_acc")):
        alone = evaluate(model, DeviceBatches(split.in_memory, 128, cpu, train=False), cpu)
        assert alone == pytest.approx(ck["result"][key][-1], abs=1e-9), key


def test_two_ranks_hold_identical_masks_and_write_one_set_of_files(ddp_run):
    save, out, err = ddp_run
    digests = re.findall(r"rank (\d): state (\d) mask ([0-9a-f]+)", err)
    by_state = {}
    for rank, state, digest in digests:
        by_state.setdefault(state, {})[rank] = digest
    assert set(by_state) == {"1", "2"}
    for state, ranks in by_state.items():
        assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"], (state, ranks)
    assert by_state["2"]["0"] == final_mask_digest(save)  # what rank 0 saved is what every rank trained with
    files = sorted(os.listdir(save))
    assert files == sorted([f"{i}{name}" for i in range(3) for name in ("checkpoint.pth.tar", "model_SA_best.pth.tar")]
                           + ["summary.json", "accuracy_per_epoch.png", "accuracy_vs_sparsity.png"])
    assert out.count("state 2 done") == 1  # one log, from rank 0
    assert "x 2 ranks (torchrun)" in out


@pytest.mark.slow
def test_ddp_resume_after_killing_the_whole_job(ddp_run, tmp_path):
    straight, _, _ = ddp_run
    save = tmp_path / "killed"
    job = torchrun(*DDP_RUN, "--save_dir", save)
    deadline = time.time() + 300
    while not (save / "1checkpoint.pth.tar").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before it could be killed"
    pids = process_tree(job.pid)
    assert len(pids) >= 3, pids  # the launcher and two ranks
    for pid in pids:  # the whole job at once
        os.kill(pid, signal.SIGKILL)
    job.communicate()
    assert not (save / "2checkpoint.pth.tar").exists()
    resumed = torchrun(*DDP_RUN, "--save_dir", save, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming from" in out
    assert final_mask_digest(save) == final_mask_digest(straight)


def test_retraining_scripts_under_torchrun(digits_imp_run, tmp_path):
    ticket = digits_imp_run / "1checkpoint.pth.tar"
    for script, extra in (("main_eval_fillback.py", []), ("main_eval_regroup_retrain.py", ["--b2", "4"])):
        save = tmp_path / script
        proc = torchrun("--pretrained", ticket, "--mask_dir", ticket, "--epochs", "1", "--save_dir", save,
                        "--save_model", *extra, script=script)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out.count(" done: sparsity") == 1
        assert sorted(os.listdir(save)) == ["accuracy_per_epoch.png", "accuracy_vs_sparsity.png", "checkpoint.pth.tar",
                                            "model_SA_best.pth.tar", "summary.json"]


class PoisonedAfterOnePass(torch.utils.data.Dataset):
    """The digits training set, whose images turn NaN after one full pass."""

    def __init__(self, base):
        self.base, self.calls = base, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.calls += 1
        x, y = self.base[i]
        return (x * float("nan") if self.calls > len(self.base) else x), y


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = load_dataset("digits", "")
    poisoned = DataSplits(PoisonedAfterOnePass(data.train), data.val, data.test, data.spec)
    train = TrainConfig(epochs=3, seed=0, workers=0)
    from models import build_model
    model = build_model("res20s", 10, 1, data.spec.mean, data.spec.std)
    ckpt = tmp_path / "0checkpoint.pth.tar"
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train_state(model, poisoned, train, torch.device("cpu"), state=0, checkpoint_file=str(ckpt),
                    best_file=str(tmp_path / "best.pth.tar"), extra={"init_weight": {}})
    saved = load_file(str(ckpt))
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                       if v.is_floating_point())


def test_non_finite_loss_from_the_command_line(tmp_path, cli_error):
    line = cli_error(main_imp, ["--lr", "1e30", "--epochs", "1", "--pruning_times", "1", "--save_dir", str(tmp_path / "r")])
    assert "loss became nan" in line and "last checkpoint is intact" in line


def test_unwritable_or_full_save_dir_is_reported_before_training(tmp_path, cli_error, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = cli_error(main_imp, ["--save_dir", str(blocker / "run")])
    assert "is not writable" in line
    import app.lifecycle
    monkeypatch.setattr(app.lifecycle.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1024))
    line = cli_error(main_imp, ["--save_dir", str(tmp_path / "full")])
    assert "MiB free" in line and "need" in line
    assert not any((tmp_path / "full").glob("*.pth.tar"))
