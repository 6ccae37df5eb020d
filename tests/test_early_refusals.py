"""What can be refused before training is refused before training: each
refusal here fires before the first training step (a spy counts the steps
and epochs; the test fails if one ran), prints its one line, exits non-zero
and leaves no run folder where none existed."""
import struct
import types
import zlib

import pytest

import app.training
import main_eval_fillback
import main_eval_regroup_retrain
import main_imp
from test_datasets import _write_images


@pytest.fixture
def steps(monkeypatch):
    """Training steps taken (batches through the training loop) in this test."""
    taken = []
    real = app.training.train_one_epoch

    def counting(model, loader, *args, **kwargs):
        counted = ((taken.append(1), batch)[1] for batch in loader)
        return real(model, counted, *args, **kwargs)
    monkeypatch.setattr(app.training, "train_one_epoch", counting)
    return taken


def refused(cli_error, script, argv, steps, save):
    """The line `script` refuses `argv` with; asserts nothing trained and no --save_dir was left."""
    line = cli_error(script, argv + ["--save_dir", str(save)])
    assert not steps, f"{len(steps)} training step(s) ran before: {line}"
    assert not save.exists(), line
    return line


def test_a_mask_slimming_cannot_cut_is_refused_before_training(digits_imp_run, tmp_path, cli_error, steps):
    """--refill_count original leaves tied channels unstructured: --export_slim
    needs every layer channel-wise, which is known once the mask is made."""
    ticket = str(digits_imp_run / "1checkpoint.pth.tar")
    line = refused(cli_error, main_eval_fillback, ["--pretrained", ticket, "--mask_dir", ticket, "--criterion", "remain",
                                                   "--refill_count", "original", "--save_model", "--export_slim",
                                                   str(tmp_path / "t.pt2")], steps, tmp_path / "run")
    assert "is not channel-wise: slimming needs a refilled mask" in line
    assert not (tmp_path / "t.pt2").exists()


def test_exports_that_would_fail_fail_before_training(digits_imp_run, tmp_path, cli_error, steps, monkeypatch):
    """The ONNX exporter or its packages failing (refill and regroup alike)
    refuses before the first epoch; a folder given as the export file and a
    start point without --pretrained are refused from the flags alone."""
    import app.onnx_export
    from utils.errors import InvalidInput
    ticket = str(digits_imp_run / "1checkpoint.pth.tar")
    ticket_flags = ["--pretrained", ticket, "--mask_dir", ticket, "--save_model"]

    def missing():
        raise InvalidInput("ONNX export needs the onnx and onnxruntime packages (onnxruntime is missing): "
                           "pip install -r requirements.txt")
    with monkeypatch.context() as patch:
        patch.setattr(app.onnx_export, "onnx_modules", missing)
        line = refused(cli_error, main_eval_fillback, ticket_flags + ["--export_onnx", str(tmp_path / "t.onnx")],
                       steps, tmp_path / "run1")
        assert "onnxruntime is missing" in line

    def no_opset(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX opset version 18 has no operator for this graph\nmore text")
    with monkeypatch.context() as patch:
        patch.setattr(app.onnx_export.torch.onnx, "export", no_opset)
        line = refused(cli_error, main_eval_regroup_retrain, ticket_flags + ["--b2", "4", "--regroup_unit", "channel",
                                                                             "--export_onnx", str(tmp_path / "r.onnx")],
                       steps, tmp_path / "run2")
        assert "ONNX export failed (RuntimeError: Unsupported: ONNX opset version 18" in line
    assert not any(tmp_path.glob("*.onnx"))
    line = refused(cli_error, main_eval_fillback, ticket_flags + ["--export_slim", str(tmp_path)], steps,
                   tmp_path / "run3")
    assert f"--export_slim '{tmp_path}' is a folder" in line
    line = refused(cli_error, main_eval_fillback, ["--mask_dir", ticket], steps, tmp_path / "run4")
    assert "--prune-type lt retrains from --pretrained" in line


def test_resuming_a_run_without_weights_is_refused_before_loading_data(digits_imp_run, tmp_path, cli_error, steps,
                                                                       monkeypatch):
    """A retraining run saved without --save_model has nothing to resume:
    said before the dataset is even loaded, its folder untouched."""
    import app.lifecycle
    import torch
    ticket = str(digits_imp_run / "1checkpoint.pth.tar")
    save = tmp_path / "run"
    save.mkdir()
    torch.save({"state": 0, "epoch": 1, "result": {}, "best_sa": 0.0}, save / "checkpoint.pth.tar")  # no --save_model
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    opened = []
    monkeypatch.setattr(app.lifecycle, "load_data", lambda *a: opened.append(1))
    line = cli_error(main_eval_fillback, ["--pretrained", ticket, "--mask_dir", ticket, "--resume",
                                          "--save_dir", str(save)])
    assert "holds results but no weights" in line and "start again with --save_model" in line
    assert not opened and not steps
    assert {p.name: p.read_bytes() for p in save.iterdir()} == before


def test_room_for_every_state_of_an_imp_run_is_checked_before_training(tmp_path, cli_error, steps, monkeypatch):
    """Room for one state's checkpoints is not enough for a run of three."""
    import app.lifecycle
    from models import build_model
    one_state = app.lifecycle.checkpoint_bytes(build_model("res20s", 10, 1, (0.3,), (0.2,)))
    monkeypatch.setattr(app.lifecycle.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=2 * one_state))
    line = refused(cli_error, main_imp, ["--pruning_times", "3", "--epochs", "1"], steps, tmp_path / "run")
    assert "the checkpoints of the 3 state(s) this run will train need about" in line


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused_at_launch(tmp_path, cli_error, steps,
                                                                             monkeypatch):
    """Under torchrun --batch_size is the global batch: 5 over 2 ranks would
    silently train with 6 (3 per rank); refused before any process group or data."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = refused(cli_error, main_imp, ["--batch_size", "5"], steps, tmp_path / "run")
    assert "--batch_size 5 is the global batch and must split evenly over the 2 torchrun ranks" in line


def test_an_init_file_that_cannot_be_created_is_refused_from_the_flags(tmp_path, cli_error, steps):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = refused(cli_error, main_imp, ["--init", str(blocker / "init.pth.tar")], steps, tmp_path / "run")
    assert f"--init '{blocker / 'init.pth.tar'}' does not exist and cannot be created there" in line


def _png_header(path, width, height):
    """A PNG that declares width x height pixels and holds almost nothing (a few dozen bytes on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, cli_error, workers):
    """A 16000x16000 PNG under a .JPEG name in a Tiny-ImageNet tree (PIL
    refuses it), and a 10000x10000 one (PIL only warns): one line naming the
    path and the pixel count, in the main process and in loader workers."""
    wnids = ["n01443537", "n01629819"]
    for wnid in wnids:
        _write_images(tmp_path / "data" / "train" / wnid / "images", 3, 64)
    _write_images(tmp_path / "data" / "val" / "images", 4, 64)
    (tmp_path / "data" / "val" / "val_annotations.txt").write_text(
        "".join(f"img{i}.JPEG\t{wnids[i % 2]}\t0\t0\t63\t63\n" for i in range(4)))
    for (width, height), name in (((16000, 16000), "img1.JPEG"), ((10000, 10000), "img2.JPEG")):
        bomb = tmp_path / "data" / "train" / wnids[1] / "images" / name
        _png_header(bomb, width, height)
        line = cli_error(main_imp, ["--dataset", "tiny-imagenet", "--data", str(tmp_path / "data"), "--arch", "res20s",
                                    "--epochs", "1", "--batch_size", "6", "--workers", workers, "--pruning_times", "1",
                                    "--save_dir", str(tmp_path / "run")])
        assert f"cannot read image '{bomb}': {width * height:,} pixels, over PIL's decompression-bomb limit" in line
        assert not (tmp_path / "run").exists()
        _write_images(bomb.parent, 3, 64)  # the good images again before the next case
