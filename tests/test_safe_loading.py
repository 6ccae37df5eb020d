"""Files load without running pickled code: a crafted checkpoint whose
unpickling would create a marker file is refused by every script that reads
files (one line, exit 2, no marker), loads with --trust_checkpoint, and our
own files and the original code's format load without the flag."""
import argparse
import io
import os

import pytest
import torch

from conftest import load_script
from utils.checkpoint import load_file
from utils.errors import InvalidInput


class _CreatesFile:
    """Unpickling this calls open(path, "w"): code that runs at load time."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (io.open, (self.path, "w"))


@pytest.fixture
def crafted(digits_imp_run, tmp_path):
    """(a real IMP checkpoint with a payload beside its weights, a real layer file with one, the marker path)."""
    marker = tmp_path / "marker"
    ckpt = load_file(str(digits_imp_run / "1checkpoint.pth.tar"))
    ckpt["payload"] = _CreatesFile(marker)
    path = tmp_path / "crafted.pth.tar"
    torch.save(ckpt, path)
    layer = tmp_path / "crafted_layer.pth.tar"
    weight = ckpt["state_dict"]["layer2.0.conv1.weight_orig"] * ckpt["state_dict"]["layer2.0.conv1.weight_mask"]
    torch.save({"weight": weight, "input_hw": (8, 8), "payload": _CreatesFile(marker)}, layer)
    return path, layer, marker


def test_every_reader_refuses_a_file_that_runs_code(crafted, digits_imp_run, tmp_path, cli_error):
    path, layer, marker = crafted
    good = str(digits_imp_run / "1checkpoint.pth.tar")
    c, out = str(path), str(tmp_path / "out")
    calls = [
        ("main_imp.py", ["--resume", "--checkpoint", c, "--save_dir", out + "1"]),
        ("main_imp.py", ["--init", c, "--save_dir", out + "2", "--epochs", "1"]),
        ("main_imp.py", ["--prune_type", "pt", "--pretrained", c, "--save_dir", out + "3", "--epochs", "1"]),
    ]
    for script in ("main_eval_fillback.py", "main_eval_regroup_retrain.py"):
        calls += [(script, ["--pretrained", c, "--mask_dir", good, "--save_dir", out + script + "a", "--epochs", "1"]),
                  (script, ["--pretrained", good, "--mask_dir", c, "--save_dir", out + script + "b", "--epochs", "1"]),
                  (script, ["--evaluate", "--checkpoint", c, "--mask_dir", good, "--save_dir", out + script + "c"])]
    calls += [("profile/regroup_conv/split.py", [c, out + "layers"]),
              ("profile/end_to_end.py", [c, "--image_size", "8"]),
              ("profile/cudnn_conv/conv.py", ["--kernel_file", str(layer)]),
              ("profile/regroup_conv/conv.py", ["--kernel_file", str(layer), "--b2", "4"]),
              ("experiments/mask_pictures.py", [c, "--layer", "layer3.0.conv2", "--out", out + ".png"])]
    for script, argv in calls:
        line = cli_error(load_script(script), argv)
        assert "wants to run 'io.open'" in line and "--trust_checkpoint" in line, (script, argv, line)
        assert not marker.exists(), (script, argv)


def test_trust_checkpoint_loads_it_with_a_warning(crafted, tmp_path, capsys):
    path, _, marker = crafted
    split = load_script("profile/regroup_conv/split.py")
    split.main(split.get_args_parser().parse_args([str(path), str(tmp_path / "layers"), "--trust_checkpoint"]))
    assert marker.exists() and any((tmp_path / "layers").iterdir())
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and "--trust_checkpoint" in warnings[0] and "runs any code" in warnings[0]


def test_our_files_and_the_original_format_load_without_the_flag(digits_imp_run, tmp_path):
    for name in os.listdir(digits_imp_run):
        if name.endswith(".pth.tar"):
            assert "state_dict" in load_file(str(digits_imp_run / name))
    model = torch.nn.Conv2d(3, 4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [80, 120])
    original = {"state": 1, "result": {"train_ta": [1.0]}, "epoch": 3, "state_dict": model.state_dict(),
                "best_sa": 50.0, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "init_weight": model.state_dict(), "args": argparse.Namespace(arch="res18", lr=0.1)}
    torch.save(original, tmp_path / "original.pth.tar")
    loaded = load_file(str(tmp_path / "original.pth.tar"))
    assert loaded["args"].arch == "res18" and loaded["scheduler"]["milestones"] == scheduler.state_dict()["milestones"]


def test_a_damaged_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="is not a readable PyTorch file"):
        load_file(str(bad))


def test_one_atomic_writer_for_checkpoints_and_json(tmp_path):
    """A write that fails midway leaves the previous file whole and no temporary behind."""
    from utils.checkpoint import save_atomic
    from app.report import write_json
    checkpoint, summary = tmp_path / "checkpoint.pth.tar", tmp_path / "summary.json"
    save_atomic({"epoch": 1}, str(checkpoint))
    write_json(str(summary), {"epoch": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")
    with pytest.raises(RuntimeError):
        save_atomic({"epoch": 2, "bad": Unsaveable()}, str(checkpoint))
    with pytest.raises(TypeError):
        write_json(str(summary), {"epoch": 2, "bad": object()})
    assert load_file(str(checkpoint), "checkpoint") == {"epoch": 1}
    assert summary.read_text().replace(" ", "").replace("\n", "") == '{"epoch":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth.tar", "summary.json"]
