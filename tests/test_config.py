"""Typed configs (app.config): flags generated from one declaration, the
original spellings through one alias table, validation when a config is
made, frozen values, and the same flags recorded as a run's "args"."""
import dataclasses

import pytest

import main_eval_fillback
import main_eval_regroup_retrain
import main_imp
from app.config import ImpConfig, RefillConfig, RegroupConfig, RetrainConfig, TrainConfig
from app.flags import FLAG_ALIASES
from utils.errors import InvalidInput

SCRIPTS = (main_imp, main_eval_fillback, main_eval_regroup_retrain)


def test_every_alias_reaches_its_flag_in_every_script_that_has_it():
    for script in SCRIPTS:
        parser = script.get_args_parser()
        for dest, aliases in FLAG_ALIASES.items():
            if f"--{dest}" not in parser._option_string_actions:
                continue
            for alias in aliases:
                assert parser._option_string_actions[alias].dest == dest, (script.__name__, alias)


def test_original_spellings_give_the_same_config():
    parser = main_imp.get_args_parser()
    ours = parser.parse_args(["--epochs", "3", "--prune_type", "rewind_lt", "--fillback", "--criterion", "l1",
                              "--fillback_rate", "0.1"])
    theirs = parser.parse_args(["--epoch", "3", "--prune-type", "rewind_lt", "--fillback", "--criteria", "l1",
                                "--fillback-rate", "0.1"])
    assert ImpConfig.from_args(ours) == ImpConfig.from_args(theirs)
    cfg = ImpConfig.from_args(theirs)
    assert cfg.train.epochs == 3 and cfg.refilling == RefillConfig("l1", 0.1) and cfg.regrouping is None


def test_recorded_flags_are_the_parsed_flags():
    from app.recipes import recipe
    for script, argv in ((main_imp, ["--regroup", "--cn", "auto"]),
                         (main_eval_fillback, ["--mask_dir", "m", "--prune-type", "trained"]),
                         (main_eval_regroup_retrain, ["--mask_dir", "m", "--prune-type", "trained", "--b2", "4"])):
        args = script.get_args_parser().parse_args(argv)
        if script is main_imp:
            flags = ImpConfig.from_args(args).flags()
        else:
            restructure = (RefillConfig if script is main_eval_fillback else RegroupConfig).from_args(args)
            flags = {**RetrainConfig.from_args(args).flags(), **restructure.flags()}
        parsed = vars(args)
        for name, value in recipe(args.dataset).items():  # recipe flags not given: the dataset's recipe
            if name in flags:
                parsed.setdefault(name, value)
        if script is main_imp:  # IMP without --fillback records no refill settings
            for name in ("criterion", "fillback_rate", "refill_count"):
                parsed.pop(name)
        if script is main_eval_regroup_retrain:  # a flag the script lacks is recorded at its default
            parsed["export_slim"] = None
        assert flags == parsed, script.__name__


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(arch="resnet999"), "unknown --arch 'resnet999'; valid: .*res34"),
    (lambda: TrainConfig(lr=0), "--lr must be positive"),
    (lambda: TrainConfig(decreasing_lr="8,x"), "comma-separated epochs"),
    (lambda: RefillConfig(criterion="best"), "unknown refill criterion 'best'"),
    (lambda: RefillConfig(round_to=0), "--round_to must be a positive whole number"),
    (lambda: RegroupConfig(cn=0), r"cn \(parts per layer\) must be a whole number"),
    (lambda: RegroupConfig(round_to=8), "round_to"),
    (lambda: ImpConfig(rate=1.0), r"--rate must be in \(0, 1\)"),
    (lambda: ImpConfig(refilling=RefillConfig(), regrouping=RegroupConfig()), "choose one"),
    (lambda: ImpConfig(prune_type="pt"), "give --pretrained"),
    (lambda: RetrainConfig(), "--mask_dir <checkpoint with masks> is required"),
    (lambda: RetrainConfig(mask_dir="m", prune_type="trained", export_onnx="x.onnx"), "add --save_model"),
    (lambda: RetrainConfig(mask_dir="m"), "--prune-type lt retrains from --pretrained"),
    (lambda: TrainConfig(dataset="cifar10", split_file="s.npy"), "--split_file splits tiny-imagenet"),
])
def test_a_config_refuses_bad_values_when_made(make, message):
    with pytest.raises(InvalidInput, match=message):
        make()


def test_configs_are_frozen_and_derive_once():
    train = TrainConfig(dataset="digits")
    assert train.workers is None and train.milestones() == [7, 11]  # workers: app.batches.default_workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.lr = 1.0
    short = ImpConfig(TrainConfig(epochs=2), prune_type="rewind_lt", rewind_epoch=16)
    assert short.rewind_epoch == 1  # a short trial of a long recipe rewinds to the last epoch it has
    assert isinstance(InvalidInput("x"), ValueError)
