"""Typed run configurations: one frozen dataclass per concern, each
declaring its flags once (name = field name = argparse dest, default, help),
generating them (`add_args`), building itself from parsed flags
(`from_args`) and validating itself once, when it is made.

- TrainConfig: data, model, seed, device, the optimiser and schedule, where
  the run is saved and what it resumes or starts from;
- RefillConfig / RegroupConfig: how a mask is made channel-wise or
  block-wise (`apply(model, mask, data, train)` -> (new mask, per-layer report));
- ImpConfig: IMP with rewinding, optionally refilling or regrouping every
  round; RetrainConfig: retraining one ticket.

The flag machinery is app/flags.py; the original code's flag spellings are
accepted beside ours through its table FLAG_ALIASES, so that code's README
command lines run verbatim.
"""
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from app.datasets import dataset_names, make_loader, model_for
from app.flags import FlagConfig, flag
from app.recipes import RecipeChoice
from models import model_names
from pruner.controls import random_mask_like
from pruner.partition import PARTITIONERS
from pruner.refill import (check_refill_args, criterion_names, format_refill_report, needs_batch, refill_layers,
                           refill_layers_report, refilled_mask)
from pruner.regroup import UNITS, check_regroup_args, layer_summary, parse_parts, regroup_layer, regroup_mask, report
from utils.checkpoint import TRUST_HELP
from utils.errors import InvalidInput


def creatable_file(path):
    """Whether a file can be written at `path` later in the run: it is not a
    folder, and the nearest folder above it that exists is writable (the
    missing ones between are created when it is written)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return False
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def parse_milestones(text):
    """--decreasing_lr "80,120" -> [80, 120]."""
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise InvalidInput(f"--decreasing_lr must be comma-separated epochs like 80,120, got '{text}'") from None


@dataclass(frozen=True)
class TrainConfig(FlagConfig):
    """How one model is trained, and where the run lives. Its recipe flags
    default to --dataset's training recipe on the command line (app.recipes);
    built in Python, to digits'."""
    data: str = flag("datasets", "dataset location (unused for digits)", "general")
    dataset: str = flag("digits", f"one of: {', '.join(dataset_names())}", "general")
    download: bool = flag(False, "fetch cifar10/cifar100 into --data when its files are missing (the official "
                                 "archive, md5-checked)", "general")
    split_file: Optional[str] = flag(None, "tiny-imagenet's train/validation split: a permutation of the training "
                                           "images' indices (.npy, read without pickle, e.g. the original code's "
                                           "npy_files/tiny-imagenet-train-val.npy, or a JSON list); the first 90%% "
                                           "train, the rest validate (default: the stored split)", "general",
                                     metavar="FILE")
    arch: str = flag("res20s", f"one of: {', '.join(model_names())}", "general")
    seed: int = flag(1, "seed of weights, data order and augmentation", "general", type=int)
    save_dir: str = flag("runs/imp", "where checkpoints, summary.json and plots go", "general")
    gpu: Optional[int] = flag(None, "CUDA device index (CPU when CUDA is absent)", "general", type=int)
    workers: Optional[int] = flag(None, "data-loading processes of the per-image path (default: on CUDA every core "
                                        "this process may use, shared among a node's ranks; on the CPU 1)",
                                  "general", type=int)
    per_image: bool = flag(False, "feed in-memory datasets (digits, CIFAR) through the per-image DataLoader path "
                                  "instead of batches gathered and augmented on the device (the reference path)",
                           "general")
    amp: bool = flag(True, "disable mixed precision on CUDA", "general", flags=("--no_amp",))
    amp_dtype: str = flag("auto", "autocast dtype on CUDA: auto = bf16 where the GPU computes it (compute capability "
                                  "8.0 on; no gradient scaler), else fp16 with a scaler", "general", choices=["auto", "bf16", "fp16"])
    batch_size: int = flag(128, "images per batch (the global batch under torchrun)", "training", type=int)
    lr: float = flag(0.1, "initial learning rate", "training", type=float)
    momentum: float = flag(0.9, "SGD momentum", "training", type=float)
    weight_decay: float = flag(5e-4, "SGD weight decay", "training", type=float)
    epochs: int = flag(15, "epochs per IMP state / retraining run", "training", type=int)
    warmup: int = flag(0, "epochs of linear learning-rate warm-up", "training", type=int)
    warmup_unit: str = flag("epoch", "the warm-up raises the rate once an epoch or at every iteration (the "
                                     "original code's CIFAR scripts)", "training", choices=["epoch", "iteration"])
    print_freq: int = flag(50, "batches between progress lines (logs without a TTY)", "training", type=int)
    decreasing_lr: Optional[str] = flag(None, "comma-separated epochs where the lr drops 10x", "training")
    pretrained: Optional[str] = flag(None, "checkpoint with the weights to start from / rewind to", "ticket")
    conv1: bool = flag(False, "prune the stem convolution too", "ticket")
    fc: bool = flag(False, "accepted for the original command lines; the classifier is never pruned", "ticket")
    resume: bool = flag(False, "continue the run in --save_dir", "ticket")
    checkpoint: Optional[str] = flag(None, "checkpoint to resume from (default: the latest in --save_dir)", "ticket")
    trust_checkpoint: bool = flag(False, TRUST_HELP, "ticket")
    recipe_given: tuple = ()  # the recipe flags given on the command line (the others came from the recipe)

    recipe_fields = ("epochs", "lr", "decreasing_lr", "weight_decay", "batch_size", "warmup", "warmup_unit")

    @classmethod
    def from_args(cls, args, **given):
        return super().from_args(args, **{"recipe_given": cls.recipe_flags_given(args), **given})

    def __post_init__(self):
        if self.dataset not in dataset_names():
            raise InvalidInput(f"unknown --dataset '{self.dataset}'; valid: {', '.join(dataset_names())}")
        if self.arch not in model_names():
            raise InvalidInput(f"unknown --arch '{self.arch}'; valid: {', '.join(model_names())}")
        if self.split_file and self.dataset != "tiny-imagenet":
            raise InvalidInput(f"--split_file splits tiny-imagenet's training images; --dataset {self.dataset} has "
                               "its own fixed split")
        if self.split_file and not os.path.isfile(self.split_file):
            raise InvalidInput(f"--split_file '{self.split_file}' not found")
        if self.workers is not None and self.workers < 0:
            raise InvalidInput(f"--workers must be 0 or more, got {self.workers}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InvalidInput(f"--lr must be positive, got {self.lr}")
        ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, known before any process group exists
        if self.batch_size % ranks:
            raise InvalidInput(f"--batch_size {self.batch_size} is the global batch and must split evenly over the "
                               f"{ranks} torchrun ranks (a multiple of {ranks})")
        if self.decreasing_lr:
            parse_milestones(self.decreasing_lr)

    def milestones(self):
        """Epochs at which the learning rate drops 10x: --decreasing_lr, or 50%
        and 75% of the run when it is not given."""
        if self.decreasing_lr:
            return parse_milestones(self.decreasing_lr)
        return [self.epochs // 2, (3 * self.epochs) // 4]


def training_batch(data, train):
    """A fixed batch of training images (seeded) for activation-based refill criteria."""
    return next(iter(make_loader(data.train, train.batch_size, True, 0, seed=train.seed)))


def round_to_flag(group):
    """--round_to, one flag shared by refill and regroup (a field of each)."""
    return flag(1, "round each layer's kept channels (refill, refill+) or each block's input channels "
                   "(regroup --regroup_unit channel) up to a multiple of N: oneDNN computes channels in blocks of "
                   "16, tensor cores in 8; 1 = the paper's k", group, type=int, metavar="N")


@dataclass(frozen=True)
class RefillConfig(FlagConfig):
    """Refill (rate 0) or refill+ (rate > 0): keep each layer's best channels whole."""
    criterion: str = flag("magnitude", f"channel score, one of: {', '.join(criterion_names())}", "refill")
    fillback_rate: float = flag(0.0, "0 = refill; > 0 = refill+ (share of the remaining channels added back)",
                                "refill", type=float)
    round_to: int = round_to_flag("refill")
    refill_count: str = flag("paper", "channels a layer keeps: paper = k whole channels (a ticket with no more "
                                      "weights than the unstructured one); original = the original code's rule "
                                      "(channels above the k-th best score, plus one tied channel drawn with --seed: "
                                      "k + 1 when scores differ; docs/fidelity.md)", "refill", metavar="paper|original")
    seed: int = 1  # draws the original rule's tied channel: the run's --seed

    def __post_init__(self):
        check_refill_args(self.criterion, self.fillback_rate, self.round_to, self.refill_count)

    @classmethod
    def from_args(cls, args, **given):
        return super().from_args(args, **{"seed": getattr(args, "seed", cls.seed), **given})

    @property
    def name(self):
        return "refill" if self.fillback_rate == 0 else "refill+"

    def apply(self, model, mask, data, train):
        """(channel-wise mask, per-layer report) of `model` holding the ticket."""
        batch = training_batch(data, train) if needs_batch(self.criterion) else None
        kept = refill_layers(model, mask, self.criterion, self.fillback_rate, batch, self.round_to,
                             self.refill_count, self.seed)
        layers = refill_layers_report(mask, kept)
        print(f"{self.name} ({self.criterion}, rate {self.fillback_rate}, round_to {self.round_to}, "
              f"count {self.refill_count}):\n{format_refill_report(layers)}")
        return refilled_mask(mask, kept), layers


@dataclass(frozen=True)
class RegroupConfig(FlagConfig):
    """Regroup: each layer's rows partitioned into parts, each part's dense block kept."""
    t1: float = flag(1.5, "a block row must hold > t1 x its nonzeros left outside", "regroup", type=float)
    cn: object = flag(8, "parts of each layer's row partition (blocks per layer, at most); 'auto': one part per "
                         "2 x b2 rows holding weights, so every layer that large gets blocks", "regroup",
                      type=parse_parts, metavar="N|auto")
    nn: int = flag(32, "row tile of the kernel: blocks split into a multiple of nn + rest", "regroup", type=int)
    b2: int = flag(16, "a part becomes a block only with more than b2 rows", "regroup", type=int)
    regroup_unit: str = flag("weight", "a column is one weight (the paper) or one whole input channel", "regroup",
                             choices=UNITS)
    partitioner: str = flag("greedy", "row partitioner: greedy (fast) or mtkahypar (reference)", "regroup",
                            choices=sorted(PARTITIONERS))
    round_to: int = round_to_flag("regroup")
    seed: int = 1  # the partitioner's seed: the run's --seed

    def __post_init__(self):
        check_regroup_args(self.t1, self.cn, self.nn, self.b2, self.regroup_unit, self.round_to)

    @classmethod
    def from_args(cls, args, **given):
        return super().from_args(args, **{"seed": getattr(args, "seed", cls.seed), **given})

    name = "regroup"

    def knobs(self):
        """The algorithm's keyword arguments (pruner.regroup.regroup_mask / regroup_layer)."""
        return dict(t1=self.t1, cn=self.cn, nn=self.nn, b2=self.b2, seed=self.seed, partitioner=self.partitioner,
                    unit=self.regroup_unit, round_to=self.round_to)

    def regroup(self, mask):
        """(block-wise Mask, {layer: LayerRegroup}) of a Mask."""
        return regroup_mask(mask, **self.knobs())

    def regroup_layer(self, layer_mask):
        """(block-wise mask, LayerRegroup) of one layer's mask."""
        return regroup_layer(layer_mask, **self.knobs())

    def apply(self, model=None, mask=None, data=None, train=None):
        """(block-wise mask, per-layer report) of `mask`."""
        new_mask, infos = self.regroup(mask)
        print(report(infos))
        return new_mask, {name: layer_summary(info) for name, info in infos.items()}


CONTROLS = ("random_pruning", "random_reinit")
REINIT_SEED_OFFSET = 1_000_003  # fresh weights of random_reinit: drawn from --seed + this, not the ticket's init


@dataclass(frozen=True)
class ControlConfig(FlagConfig):
    """A control of a lottery ticket, retrained like the ticket itself:
    random pruning (each layer keeps as many weights as the ticket, at random
    positions drawn from --seed) or random reinitialisation (the ticket's
    mask over fresh weights drawn from --seed)."""
    control: str = flag("random_pruning", "random_pruning: the ticket's per-layer sparsity at random positions; "
                                          "random_reinit: the ticket's mask, fresh random weights", "control",
                        choices=CONTROLS)
    seed: int = 1

    @classmethod
    def from_args(cls, args, **given):
        return super().from_args(args, **{"seed": getattr(args, "seed", cls.seed), **given})

    @property
    def name(self):
        return self.control.replace("_", " ")

    def apply(self, model=None, mask=None, data=None, train=None):
        """(the control's mask, per-layer report) of the ticket's `mask`."""
        new_mask = random_mask_like(mask, self.seed) if self.control == "random_pruning" else mask
        layers = {name: {"density": float(m.mean()), "kept": int(m.count_nonzero()),
                         "same_positions": float((m * new_mask[name]).sum() / max(1.0, float(m.sum())))}
                  for name, m in mask.items()}
        print(f"{self.name}: {len(mask)} layers, every layer keeps the ticket's {100 * mask.density():.2f}% of its "
              "weights" + (" at random positions" if self.control == "random_pruning" else ", weights drawn anew"))
        return new_mask, layers

    def start_weights(self, weights, train, spec):
        """The weights retraining starts from: fresh ones for random_reinit,
        `weights` (the ticket's rewind point) otherwise."""
        if self.control != "random_reinit":
            return weights
        torch.manual_seed(self.seed + REINIT_SEED_OFFSET)
        return {k: v.detach().clone() for k, v in model_for(train.arch, spec).state_dict().items()}


@dataclass(frozen=True)
class ImpConfig(FlagConfig):
    """Iterative magnitude pruning with rewinding; with `refilling` or
    `regrouping`, each round's mask is post-processed before the rewind."""
    train: TrainConfig = field(default_factory=TrainConfig)
    init: Optional[str] = flag(None, "initial weights file: created when missing, reused when present", "IMP")
    pruning_times: int = flag(8, "number of IMP states, dense state 0 included", "IMP", type=int)
    rate: float = flag(0.2, "fraction of remaining weights pruned per state", "IMP", type=float)
    prune_type: str = flag("lt", "where to rewind", "IMP", choices=["lt", "pt", "rewind_lt"])
    rewind_epoch: int = flag(3, "rewind_lt: epochs of state 0 before the rewind point", "IMP", type=int)
    refilling: Optional[RefillConfig] = None
    regrouping: Optional[RegroupConfig] = None
    recipe_given: tuple = ()

    recipe_fields = ("rewind_epoch", "prune_type", "pruning_times")

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise InvalidInput(f"--rate must be in (0, 1), got {self.rate}")
        if self.pruning_times < 1:
            raise InvalidInput(f"--pruning_times must be at least 1, got {self.pruning_times}")
        if self.refilling is not None and self.regrouping is not None:
            raise InvalidInput("--fillback and --regroup are two different post-processings: choose one")
        if self.init and not os.path.exists(self.init) and not creatable_file(self.init):
            raise InvalidInput(f"--init '{self.init}' does not exist and cannot be created there (a folder, or "
                               "under a file or a folder this user cannot write)")
        if self.prune_type == "pt" and not self.train.pretrained:
            raise InvalidInput("--prune_type pt rewinds to --pretrained weights: give --pretrained <checkpoint>")
        if self.prune_type == "rewind_lt" and self.rewind_epoch < 0:
            raise InvalidInput(f"--rewind_epoch must be at least 0, got {self.rewind_epoch}")
        if self.prune_type == "rewind_lt" and self.rewind_epoch >= self.train.epochs:
            # Short trial runs of long recipes (the README's --rewind_epoch 16 with a few epochs).
            print(f"--rewind_epoch {self.rewind_epoch} is not below --epochs {self.train.epochs}: "
                  f"rewinding to the weights after {self.train.epochs - 1} epoch(s) instead")
            object.__setattr__(self, "rewind_epoch", self.train.epochs - 1)

    @classmethod
    def add_args(cls, parser, skip=(), group=None, **defaults):
        TrainConfig.add_args(parser, **defaults)
        super().add_args(parser, skip, group, **defaults)
        g = parser.add_argument_group("IMP-Refill: refill the mask after every round")
        g.add_argument("--fillback", action="store_true", help="make each round's mask channel-wise (IMP-Refill)")
        RefillConfig.add_args(parser, group=g)
        g = parser.add_argument_group("IMP-Regroup: regroup the mask after every round")
        g.add_argument("--regroup", action="store_true", help="regroup each round's mask into dense blocks (IMP-Regroup)")
        return RegroupConfig.add_args(parser, group=g)

    @classmethod
    def from_args(cls, args, **given):
        if args.round_to != 1 and not (args.fillback or args.regroup):
            raise InvalidInput(f"--round_to {args.round_to} rounds what --fillback or --regroup keeps: add one of them")
        if args.refill_count != "paper" and not args.fillback:
            raise InvalidInput(f"--refill_count {args.refill_count} counts what --fillback keeps: add --fillback")
        return super().from_args(args, train=TrainConfig.from_args(args),
                                 refilling=RefillConfig.from_args(args) if args.fillback else None,
                                 regrouping=RegroupConfig.from_args(args) if args.regroup else None,
                                 recipe_given=cls.recipe_flags_given(args), **given)

    def flags(self):
        return {**super().flags(), "fillback": self.refilling is not None, "regroup": self.regrouping is not None}

    def recipe_record(self):
        """summary.json's "recipe": --dataset's recipe and the flags that overrode it."""
        return RecipeChoice(self.train.dataset, self.train.recipe_given + self.recipe_given).record(self.flags())

    @property
    def post_processing(self):
        """The refill or regroup config applied to each round's mask, or None."""
        return self.refilling or self.regrouping


START_WEIGHTS = ("lt", "rewind_lt", "pt", "trained")


@dataclass(frozen=True)
class RetrainConfig(FlagConfig):
    """Retraining one ticket (a mask from --mask_dir) after it is restructured."""
    train: TrainConfig = field(default_factory=TrainConfig)
    mask_dir: Optional[str] = flag(None, "checkpoint whose masks (and trained weights) form the ticket", "retraining")
    save_model: bool = flag(False, "store weights and masks in the checkpoints", "retraining")
    prune_type: str = flag("lt", "weights to retrain from: lt/rewind_lt = --pretrained's init_weight (the rewind "
                                 "point), pt = --pretrained's weights, trained = --mask_dir's trained weights",
                           "retraining", choices=START_WEIGHTS)
    evaluate: bool = flag(False, "only evaluate --checkpoint", "retraining")
    export_slim: Optional[str] = flag(
        None, "also export the physically slimmed model (from the best checkpoint, or from --checkpoint with "
              "--evaluate) to FILE (.pt2, torch.export, dynamic batch), after checking that the saved program "
              "gives the masked model's outputs", "export", metavar="FILE")
    export_onnx: Optional[str] = flag(
        None, "also export the structured ticket (from the best checkpoint, or from --checkpoint with --evaluate) "
              "as ONNX with a dynamic batch, kept only if it passes onnx.checker and gives the PyTorch model's "
              "outputs in ONNX Runtime", "export", metavar="FILE")

    def __post_init__(self):
        if self.evaluate and not self.train.checkpoint:
            raise InvalidInput("--evaluate needs --checkpoint <file with weights> (a run saved with --save_model)")
        if not self.evaluate and not self.mask_dir:
            raise InvalidInput("--mask_dir <checkpoint with masks> is required (e.g. a main_imp.py "
                               "{i}checkpoint.pth.tar)")
        if not self.evaluate and self.prune_type != "trained" and not self.train.pretrained:
            raise InvalidInput(f"--prune-type {self.prune_type} retrains from --pretrained: give --pretrained "
                               "<checkpoint> (or --prune-type trained)")
        for name in ("export_slim", "export_onnx"):
            path = getattr(self, name)
            if not path:
                continue
            if not (self.save_model or self.evaluate):
                raise InvalidInput(f"--{name} needs the retrained weights: add --save_model "
                                   "(or use --evaluate --checkpoint)")
            if os.path.isdir(path):
                raise InvalidInput(f"--{name} '{path}' is a folder: expected the file to write")
            folder = os.path.dirname(os.path.abspath(path))
            if folder != os.path.abspath(self.train.save_dir) and not (os.path.isdir(folder)
                                                                       and os.access(folder, os.W_OK)):
                raise InvalidInput(f"--{name} '{path}': its folder does not exist or cannot be written")

    @classmethod
    def add_args(cls, parser, skip=(), group=None, **defaults):
        TrainConfig.add_args(parser, **defaults)
        return super().add_args(parser, skip, group, **defaults)

    @classmethod
    def from_args(cls, args, **given):
        return super().from_args(args, train=TrainConfig.from_args(args), **given)

    def recipe_record(self):
        """summary.json's "recipe": --dataset's recipe (its training part) and the flags that overrode it."""
        return RecipeChoice(self.train.dataset, self.train.recipe_given).record(self.flags())
