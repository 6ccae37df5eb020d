"""The paper's protocols around the algorithms: Tiny-ImageNet's fixed 90k/10k
split and the original code's permutation file, ImageNet's held-out
validation, no selection on the test set, a recipe per dataset, and the
random controls a ticket is judged against."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

import app.training
import main_eval_control
import main_imp
from app.config import ControlConfig, ImpConfig, TrainConfig
from app.datasets import load_dataset
from app.image_datasets import TINY_SPLIT_FILE, held_out, tiny_imagenet_split
from pruner.controls import random_mask_like
from pruner.mask import Mask
from test_datasets import _write_images
from utils.checkpoint import load_file

VAL_SHA256 = "65b38eea4f0da7c455546355c9358a4ab2782006e42461189d3748c4e413386f"  # of the stored validation indices


def test_tiny_imagenet_split_is_90k_10k_fixed_and_stratified():
    """The stored split: 90,000 train and 10,000 validate, disjoint and
    complete, 50 of each class's 500 images validate, and its digest is the
    one written here: the same on every run and machine."""
    train, val = tiny_imagenet_split(100_000)
    assert len(train) == 90_000 and len(val) == 10_000
    assert sorted(train + val) == list(range(100_000))
    assert np.bincount(np.asarray(val) // 500).tolist() == [50] * 200
    assert hashlib.sha256(json.dumps(sorted(val)).encode()).hexdigest() == VAL_SHA256
    with open(TINY_SPLIT_FILE) as f:
        assert json.load(f)["val_sha256"] == VAL_SHA256
    assert tiny_imagenet_split(100_000) == (train, val)


def fake_tiny(root, per_class=10, wnids=("n01443537", "n01629819"), test_labels=None):
    for wnid in wnids:
        _write_images(root / "train" / wnid / "images", per_class, 64)
    test_labels = test_labels or [i % len(wnids) for i in range(6)]
    _write_images(root / "val" / "images", len(test_labels), 64)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"img{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n" for i, label in enumerate(test_labels)))
    return root


def test_the_original_codes_npy_permutation_splits_tiny_imagenet(tmp_path):
    """A file in the original's format (numpy int32 [n], a permutation of the
    ImageFolder indices) gives its first 90% to training, the rest to
    validation; object arrays (pickle) and non-permutations are refused."""
    root = fake_tiny(tmp_path / "tiny")
    order = np.random.default_rng(3).permutation(20).astype(np.int32)
    np.save(tmp_path / "split.npy", order)
    data = load_dataset("tiny-imagenet", str(root), split_file=str(tmp_path / "split.npy"))
    assert data.train.indices == order[:18].tolist() and data.val.indices == order[18:].tolist()
    assert len(data.test) == 6 and data.spec.image_size == 64 and not data.spec.imagenet_stem
    assert data.spec.mean == (0.4802, 0.4481, 0.3975)
    from utils.errors import InvalidInput
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "short.npy", order[:10])
    for bad, message in (("objects.npy", "not a readable .npy"), ("short.npy", "must be a permutation of the 20")):
        with pytest.raises(InvalidInput, match=message):
            load_dataset("tiny-imagenet", str(root), split_file=str(tmp_path / bad))


def test_imagenet_validates_on_held_out_training_images_and_tests_on_val(tmp_path):
    for split, n in (("train", 30), ("val", 3)):
        for wnid in ("n01440764", "n01443537"):
            _write_images(tmp_path / split / wnid, n, 40)
    data = load_dataset("imagenet", str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (54, 6, 6)
    assert not set(data.train.indices) & set(data.val.indices)
    held = held_out(data.train.base.samples)
    assert held == data.val.indices
    shuffled = list(reversed(data.train.base.samples))  # the choice does not depend on the listing order
    assert sorted(data.train.base.samples[i] for i in held) == sorted(shuffled[i] for i in held_out(shuffled))


def test_the_epoch_kept_is_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """A fake Tiny-ImageNet whose validation and test sets differ: per epoch
    the validation set scores 10, 30, 20 and the test set 50, 10, 40; the run
    keeps epoch 2 (best validation) and reports its test accuracy, 10."""
    root = fake_tiny(tmp_path / "tiny")
    data = load_dataset("tiny-imagenet", str(root))
    scripted = {"val": iter([10.0, 30.0, 20.0]), "test": iter([50.0, 10.0, 40.0])}

    def scored(model, batches, device, dtype=None, dist_ctx=None):
        return next(scripted["test" if batches.sampler.n == len(data.test) else "val"])
    monkeypatch.setattr(app.training, "evaluate", scored)
    assert len(data.val) != len(data.test)
    save = tmp_path / "run"
    main_imp.main(main_imp.get_args_parser().parse_args(
        ["--dataset", "tiny-imagenet", "--data", str(root), "--arch", "res20s", "--epochs", "3", "--pruning_times", "1",
         "--batch_size", "6", "--workers", "0", "--save_dir", str(save)]))
    state = json.loads((save / "summary.json").read_text())["states"][0]
    assert state["best_epoch"] == 2 and state["test_acc_at_best_val"] == 10.0 and state["best_val_acc"] == 30.0
    assert load_file(str(save / "0model_SA_best.pth.tar"))["epoch"] == 2


def test_each_dataset_has_its_recipe_and_a_flag_overrides_it(digits_imp_run, capsys):
    parser = main_imp.get_args_parser()
    cifar = ImpConfig.from_args(parser.parse_args(["--dataset", "cifar10"]))
    assert (cifar.train.epochs, cifar.train.lr, cifar.train.decreasing_lr, cifar.train.weight_decay,
            cifar.train.batch_size, cifar.train.warmup_unit, cifar.rewind_epoch, cifar.prune_type,
            cifar.pruning_times) == (160, 0.1, "80,120", 1e-4, 128, "iteration", 16, "rewind_lt", 10)
    imagenet = ImpConfig.from_args(parser.parse_args(["--dataset", "imagenet", "--epochs", "30", "--lr", "0.2"]))
    assert (imagenet.train.epochs, imagenet.train.lr, imagenet.train.batch_size, imagenet.train.warmup,
            imagenet.train.decreasing_lr) == (30, 0.2, 1024, 5, "29,59,79")
    record = imagenet.recipe_record()
    assert record["dataset"] == "imagenet" and record["values"]["epochs"] == 90
    assert record["overrides"] == {"epochs": 30, "lr": 0.2} and record["given"] == ["epochs", "lr"]
    typed = ImpConfig.from_args(parser.parse_args(["--dataset", "imagenet", "--epochs", "90"]))
    assert typed.recipe_record()["overrides"] == {} and typed.recipe_record()["given"] == ["epochs"]
    # built in Python, a config trains digits' values: the record says what differs from cifar10's recipe
    python_api = ImpConfig(TrainConfig(dataset="cifar10")).recipe_record()["overrides"]
    assert python_api["epochs"] == 15 and python_api["weight_decay"] == 5e-4 and python_api["pruning_times"] == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "training recipes" in shown and "80,120" in shown and "29,59,79" in shown
    assert "default:thedataset'srecipe,digits15;cifar10/cifar100/tiny-imagenet160;imagenet90" in "".join(shown.split())
    from conftest import load_script
    for script in ("main_eval_fillback.py", "main_eval_regroup_retrain.py", "main_eval_control.py",
                   "experiments/reproduce.py"):  # every script that takes the recipe flags prints them
        with pytest.raises(SystemExit):
            load_script(script).get_args_parser().parse_args(["--help"])
        assert "default:thedataset'srecipe,digits15;" in "".join(capsys.readouterr().out.split()), script
    summary = json.loads((digits_imp_run / "summary.json").read_text())  # main_imp.py --pruning_times 2
    assert summary["recipe"]["dataset"] == "digits" and summary["recipe"]["overrides"] == {"pruning_times": 2}
    assert summary["args"]["epochs"] == 15 and summary["args"]["weight_decay"] == 5e-4


def test_random_pruning_keeps_each_layers_sparsity_exactly():
    generator = torch.Generator().manual_seed(0)
    mask = Mask({f"l{i}": (torch.rand(16, 8, 3, 3, generator=generator) < p).float()
                 for i, p in enumerate((0.9, 0.5, 0.1, 0.02))})
    randomised = random_mask_like(mask, seed=4)
    for name, layer in mask.items():
        assert int(randomised[name].count_nonzero()) == int(layer.count_nonzero())
        assert set(randomised[name].unique().tolist()) <= {0.0, 1.0}
        assert not torch.equal(randomised[name], layer)
    assert all(torch.equal(randomised[n], random_mask_like(mask, seed=4)[n]) for n in mask)
    assert not torch.equal(random_mask_like(mask, seed=5)["l1"], randomised["l1"])


def test_random_reinit_keeps_the_mask_and_changes_every_weight(digits_imp_run, tmp_path):
    """main_eval_control.py --control random_reinit: the retrained ticket
    holds exactly the ticket's mask, and it started from weights that differ
    from the ticket's rewind point in every conv and linear weight."""
    ticket = digits_imp_run / "1checkpoint.pth.tar"
    rewind = load_file(str(ticket))["init_weight"]
    control = ControlConfig(control="random_reinit", seed=1)
    spec = load_dataset("digits", "").spec
    fresh = control.start_weights(rewind, TrainConfig(), spec)
    layers = [k for k, v in rewind.items() if k.endswith("weight") and v.dim() in (2, 4)]
    assert layers and all((fresh[k] != rewind[k]).all() for k in layers)
    save = tmp_path / "reinit"
    main_eval_control.main(main_eval_control.get_args_parser().parse_args(
        ["--pretrained", str(ticket), "--mask_dir", str(ticket), "--control", "random_reinit", "--epochs", "1",
         "--save_model", "--save_dir", str(save)]))
    kept = Mask.from_state_dict(load_file(str(save / "checkpoint.pth.tar"))["state_dict"])
    original = Mask.load(str(ticket))
    assert kept.keys() == original.keys() and all(torch.equal(kept[n], original[n]) for n in kept)
    summary = json.loads((save / "summary.json").read_text())
    assert summary["script"] == "random reinit" and summary["sparsity"] == pytest.approx(original.sparsity())


def test_random_pruning_control_from_the_command_line(digits_imp_run, tmp_path):
    ticket = digits_imp_run / "1checkpoint.pth.tar"
    save = tmp_path / "random"
    main_eval_control.main(main_eval_control.get_args_parser().parse_args(
        ["--pretrained", str(ticket), "--mask_dir", str(ticket), "--epochs", "1", "--save_model", "--save_dir",
         str(save)]))
    kept = Mask.from_state_dict(load_file(str(save / "checkpoint.pth.tar"))["state_dict"])
    original = Mask.load(str(ticket))
    for name in original:
        assert int(kept[name].count_nonzero()) == int(original[name].count_nonzero())
    assert sum(not torch.equal(kept[n], original[n]) for n in original) == len(original)
    assert json.loads((save / "summary.json").read_text())["script"] == "random pruning"
