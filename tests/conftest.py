"""Shared test helpers: the repository root on sys.path, Triton's CPU
interpreter switched on, and a runner for the entry scripts as a user runs
them (a subprocess)."""
import importlib.util
import os
import subprocess
import sys

import pytest

# Triton kernels run in Triton's CPU interpreter here. It must be chosen before triton is first imported
# (triton decorates its own library functions at import), so before any test module imports torch code.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def run_script(script, *args, cwd=None, timeout=600, env=None):
    """Run `python <script> args...` from the repo root; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def load_script(relative):
    """A script (profile/, experiments/) loaded as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], os.path.join(ROOT, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_res20s_ticket(sparsity):
    """(res20s for digits with a global magnitude mask at `sparsity` applied,
    the mask, a batch of 32 training images and labels), seeded."""
    import torch
    from models import build_model
    from pruner.magnitude import global_magnitude_prune
    from pruner.masking import apply_mask
    from app.datasets import load_dataset
    torch.manual_seed(0)
    model = build_model("res20s", 10, 1, (0.3,), (0.2,))
    mask = global_magnitude_prune(model, sparsity)
    apply_mask(model, mask)
    data = load_dataset("digits", "")
    return model, mask, (data.train.tensors[0][:32], data.train.tensors[1][:32])


@pytest.fixture
def cli_error(capsys):
    """Run an entry script's main in-process through run_cli and return the
    error text it printed; fails unless it exited non-zero without a traceback."""
    from utils.errors import run_cli

    def call(module, argv):
        with pytest.raises(SystemExit) as exc:
            run_cli(module.main, module.get_args_parser(), argv)
        err = capsys.readouterr().err
        assert exc.value.code not in (0, None), err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        return lines[0]

    return call


SEED_IMP = ("main_imp.py --data datasets/cifar10 --dataset cifar10 --arch res18 --save_dir "
            "resnet18_cifar10_lt_0.2_s1_rewind_16 --init pretrained_model/res18_cifar10_1_init.pth.tar --seed 1 "
            "--lr 0.1 --fc --rate 0.2 --pruning_times 10 --prune_type rewind_lt --epoch 160 --decreasing_lr 80,120 "
            "--rewind_epoch 16 --weight_decay 1e-4 --batch_size 128")


def seed_command(command, **replace):
    """The seed README's command with --dataset digits and short settings."""
    import shlex
    command = command.replace("--dataset cifar10", "--dataset digits")
    for old, new in replace.items():
        command = command.replace(old, new)
    return shlex.split(command)


@pytest.fixture(scope="session")
def seed_imp_run(tmp_path_factory):
    """The seed README's IMP command, verbatim but for digits, 1 epoch, 2 states.
    Returns (working directory, CompletedProcess)."""
    cwd = tmp_path_factory.mktemp("seed")
    argv = seed_command(SEED_IMP, **{"--pruning_times 10": "--pruning_times 2", "--epoch 160": "--epoch 1"})
    return cwd, run_script(argv[0], *argv[1:], cwd=cwd)


@pytest.fixture(scope="session")
def digits_imp_run(tmp_path_factory):
    """A default-settings IMP run on digits with two states (dense + 20%)."""
    save = tmp_path_factory.mktemp("digits") / "imp"
    proc = run_script("main_imp.py", "--pruning_times", "2", "--save_dir", save)
    assert proc.returncode == 0, proc.stderr
    return save


SEED_RETRAIN = ("{script} --data datasets/cifar10 --dataset cifar10 --arch res18 --pretrained "
                "resnet18_cifar10_lt_0.2_s1_rewind_16/1checkpoint.pth.tar --mask_dir "
                "resnet18_cifar10_lt_0.2_s1_rewind_16/1checkpoint.pth.tar --fc --prune-type lt --seed 1 --epoch 160 "
                "--decreasing_lr 80,120 --weight_decay 1e-4 --batch_size 128 --lr 0.1 --save_dir {save_dir}")


def run_seed_retrain(seed_imp_run, script, save_dir):
    """The seed README's refill/regroup command (i=1) on the seed IMP run, 1 epoch."""
    cwd, imp = seed_imp_run
    assert imp.returncode == 0, imp.stderr
    argv = seed_command(SEED_RETRAIN.format(script=script, save_dir=save_dir), **{"--epoch 160": "--epoch 1"})
    proc = run_script(argv[0], *argv[1:], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, proc
