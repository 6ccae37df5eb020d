"""A run folder belongs to one live run (an OS lock that dies with its
holder), and a full disk stops a run in one line, leaves no temporary file,
and --resume then ends where an uninterrupted run ends."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, load_script, run_script
from utils.checkpoint import TEMPORARY_PREFIX, load_file, lock_path
from utils.errors import run_cli
from utils.run_lock import run_folder_lock

main_imp = load_script("main_imp.py")


def _wait_for_holder(folder, process, seconds=60):
    """The holder note of `folder`'s lock once `process` has written it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with open(lock_path(folder)) as f:
                note = json.loads(f.read() or "{}")
            if note:
                return note
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no lock appeared in {folder}")


def test_a_second_run_on_a_live_folder_refuses_and_the_first_keeps_its_files(tmp_path):
    save = tmp_path / "same"
    argv = [sys.executable, os.path.join(ROOT, "main_imp.py"), "--epochs", "3", "--pruning_times", "2",
            "--save_dir", str(save)]
    first = subprocess.Popen(argv + ["--seed", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    note = _wait_for_holder(save, first)
    assert note["pid"] == first.pid
    second = run_script("main_imp.py", "--epochs", "3", "--pruning_times", "2", "--save_dir", save, "--seed", "2")
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"--save_dir '{save}' belongs to a run still going (pid {first.pid} on " in lines[0]
    assert "--seed 1" in lines[0] and lines[0].endswith("wait for it to end or choose another --save_dir")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    files = sorted(os.listdir(save))
    assert files == ["0checkpoint.pth.tar", "0model_SA_best.pth.tar", "1checkpoint.pth.tar", "1model_SA_best.pth.tar",
                     "accuracy_per_epoch.png", "accuracy_vs_sparsity.png", "summary.json"]  # the lock is gone too
    with open(save / "summary.json") as f:
        assert json.load(f)["args"]["seed"] == 1
    for name in files:
        if name.endswith(".tar"):
            assert load_file(str(save / name))["args"]["seed"] == 1, name


def test_a_killed_holder_leaves_no_lock_behind(tmp_path, cli_error):
    save = tmp_path / "run"
    hold = ("import sys, time; sys.path.insert(0, sys.argv[1]); from utils.run_lock import run_folder_lock\n"
            "with run_folder_lock(sys.argv[2]):\n    time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, ROOT, str(save)])
    _wait_for_holder(save, holder)
    line = cli_error(main_imp, ["--epochs", "1", "--pruning_times", "1", "--save_dir", str(save)])
    assert f"belongs to a run still going (pid {holder.pid} on" in line
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert os.path.exists(lock_path(save))  # the file stays; the lock died with its process
    result = main_imp.main(main_imp.get_args_parser().parse_args(["--epochs", "1", "--pruning_times", "1",
                                                                  "--save_dir", str(save)]))
    assert len(result.states) == 1 and not os.path.exists(lock_path(save))


def test_resume_of_a_live_run_is_refused(tmp_path, cli_error):
    save = tmp_path / "run"
    main_imp.main(main_imp.get_args_parser().parse_args(["--epochs", "1", "--pruning_times", "1", "--save_dir",
                                                         str(save)]))
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    with run_folder_lock(str(save)):  # another open file holding the lock, as another process would
        line = cli_error(main_imp, ["--resume", "--epochs", "2", "--pruning_times", "2", "--save_dir", str(save)])
        ticket = ["--mask_dir", str(save / "0checkpoint.pth.tar"), "--prune-type", "trained"]
        for script, argv in (("main_eval_fillback.py", ticket), ("main_eval_regroup_retrain.py", ticket),
                             ("main_eval_control.py", ticket)):
            refused = cli_error(load_script(script), argv + ["--save_dir", str(save)])
            assert f"--save_dir '{save}' belongs to a run still going (pid {os.getpid()}" in refused, script
        refused = cli_error(load_script("experiments/reproduce.py"), ["--quick", "--out", str(save)])
        assert f"--out '{save}' belongs to a run still going (pid {os.getpid()}" in refused
    assert f"--save_dir '{save}' belongs to a run still going (pid {os.getpid()}" in line
    assert {p.name: p.read_bytes() for p in save.iterdir()} == before


class _FillsUp:
    """A file whose device is full after `room` more bytes: write raises ENOSPC, as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def _epoch_curves(save):
    with open(save / "summary.json") as f:
        states = json.load(f)["states"]
    return [{k: v for k, v in s["epochs"].items() if k != "seconds"} for s in states]


def test_a_full_disk_stops_in_one_line_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch, capsys):
    argv = ["--epochs", "2", "--pruning_times", "2", "--seed", "3"]
    straight = tmp_path / "straight"
    main_imp.main(main_imp.get_args_parser().parse_args(argv + ["--save_dir", str(straight)]))

    save = tmp_path / "full"
    real_fdopen, calls = os.fdopen, []

    def fdopen(fd, *args, **kwargs):  # every file of a run goes through atomic_write's os.fdopen
        calls.append(fd)
        f = real_fdopen(fd, *args, **kwargs)
        return _FillsUp(f, 4096) if len(calls) == 3 else f  # the third write (state 0, epoch 2) fills the disk

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(sys, "argv", ["main_imp.py", *argv, "--save_dir", str(save)])
    capsys.readouterr()
    try:
        run_cli(main_imp.main, main_imp.get_args_parser(), argv + ["--save_dir", str(save)])
    except SystemExit as exit:
        assert exit.code == 2
    monkeypatch.undo()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"error: cannot write '{save}/0" in lines[0] and ".pth.tar': No space left on device; files written " \
        "before it are intact. Free space, then continue with: python " in lines[0]
    assert lines[0].endswith(f"continue with: python main_imp.py {' '.join(argv)} --save_dir {save} --resume")
    assert not [n for n in os.listdir(save) if n.startswith(TEMPORARY_PREFIX)]
    assert not os.path.exists(lock_path(save))

    main_imp.main(main_imp.get_args_parser().parse_args(argv + ["--save_dir", str(save), "--resume"]))
    assert _epoch_curves(save) == _epoch_curves(straight)
    a, b = (load_file(str(folder / "1checkpoint.pth.tar"))["state_dict"] for folder in (save, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
