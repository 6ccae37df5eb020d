"""Argparse groups shared by the entry scripts.

Flag names are the original code's, underscores and dashes as they were, so
its README command lines run verbatim (argparse's prefix matching also
accepts its `--epoch` for `--epochs`). Defaults serve the bundled digits
data: a no-flag run is a real, small CPU run.
"""
import argparse
import os
import shutil

from models import model_names
from utils.checkpoint import TEMPORARY_PREFIX, TEMPORARY_SUFFIX, add_trust_flag
from pruner.partition import PARTITIONERS
from pruner.regroup import UNITS, parse_parts
from app.datasets import dataset_names
from utils.errors import UserError


def add_general(parser, save_dir):
    g = parser.add_argument_group("general")
    g.add_argument("--data", default="datasets", help="dataset location (unused for digits)")
    g.add_argument("--dataset", default="digits", help=f"one of: {', '.join(dataset_names())}")
    g.add_argument("--arch", default="res20s", help=f"one of: {', '.join(model_names())}")
    g.add_argument("--seed", type=int, default=1, help="seed of weights, data order and augmentation")
    g.add_argument("--save_dir", default=save_dir, help="where checkpoints, summary.json and plots go")
    g.add_argument("--gpu", type=int, default=None, help="CUDA device index (CPU when CUDA is absent)")
    g.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 0 for digits, else the CPU cores this process may use, at most 4)")
    g.add_argument("--no_amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")


def add_training(parser, epochs=15):
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--epochs", type=int, default=epochs, help="epochs per IMP state / retraining run")
    g.add_argument("--warmup", type=int, default=0, help="epochs of linear learning-rate warm-up")
    g.add_argument("--print_freq", type=int, default=50, help="batches between progress lines (logs without a TTY)")
    g.add_argument("--decreasing_lr", default=None,
                   help="comma-separated epochs where the lr drops 10x (default: 50%% and 75%% of --epochs)")


def add_ticket(parser):
    """Flags naming where a ticket comes from (shared with the retraining scripts)."""
    g = parser.add_argument_group("ticket")
    g.add_argument("--pretrained", default=None, help="checkpoint with the weights to start from / rewind to")
    g.add_argument("--conv1", action="store_true", help="prune the stem convolution too")
    g.add_argument("--fc", action="store_true",
                   help="accepted for the original command lines; the classifier is never pruned")
    g.add_argument("--resume", action="store_true", help="continue the run in --save_dir")
    g.add_argument("--checkpoint", default=None, help="checkpoint to resume from (default: the latest in --save_dir)")
    add_trust_flag(g)


def add_round_to(group):
    """--round_to: channel counts rounded up for the hardware (refill's kept
    channels, channel-unit regroup's block columns)."""
    group.add_argument("--round_to", type=int, default=1, metavar="N",
                       help="round each layer's kept channels (refill, refill+) or each block's input channels "
                            "(regroup --regroup_unit channel) up to a multiple of N: oneDNN computes channels in "
                            "blocks of 16, tensor cores in 8; 1 = the paper's k")


def add_parts_flag(group, default=8):
    """--cn: a whole number of parts per layer, or 'auto' (pruner.regroup.parts_for)."""
    group.add_argument("--cn", type=parse_parts, default=default, metavar="N|auto",
                       help="parts of each layer's row partition (blocks per layer, at most); 'auto': one part per "
                            "2 x b2 rows holding weights, so every layer that large gets blocks")


def add_regroup_args(parser):
    """The regroup knobs (shared with main_imp.py's IMP-Regroup)."""
    g = parser.add_argument_group("regroup")
    g.add_argument("--t1", type=float, default=1.5, help="a block row must hold > t1 x its nonzeros left outside")
    add_parts_flag(g)
    g.add_argument("--nn", type=int, default=32, help="row tile of the kernel: blocks split into a multiple of nn + rest")
    g.add_argument("--b2", type=int, default=16, help="a part becomes a block only with more than b2 rows")
    g.add_argument("--regroup_unit", default="weight", choices=UNITS,
                   help="a column is one weight (the paper) or one whole input channel")
    g.add_argument("--partitioner", default="greedy", choices=sorted(PARTITIONERS),
                   help="row partitioner: greedy (fast) or mtkahypar (reference)")
    return g


def finish(args):
    """Check flag values and fill derived defaults; UserError on bad input."""
    if args.dataset not in dataset_names():
        raise UserError(f"unknown --dataset '{args.dataset}'; valid: {', '.join(dataset_names())}")
    if args.arch not in model_names():
        raise UserError(f"unknown --arch '{args.arch}'; valid: {', '.join(model_names())}")
    if args.workers is None:
        args.workers = 0 if args.dataset == "digits" else min(4, usable_cores())
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if args.decreasing_lr:
        try:
            [int(x) for x in str(args.decreasing_lr).split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--decreasing_lr must be comma-separated epochs like 80,120, got '{args.decreasing_lr}'") from None
    return args


def usable_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one):
    more loader processes than that only contend (PyTorch warns above it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def checkpoint_bytes(model):
    """Disk one training state needs: two checkpoints (latest and best), each
    with weights, masks, momentum and the rewind point (~4x the parameters)."""
    return 2 * 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def prepare_save_dir(path, needed_bytes=0):
    """Create --save_dir and prove it is writable, with room for
    `needed_bytes`, before any training."""
    try:
        os.makedirs(path, exist_ok=True)
        free = shutil.disk_usage(path).free
        if free < needed_bytes:
            raise UserError(f"--save_dir '{path}' has {free / 2**20:.0f} MiB free; one state's checkpoints need "
                            f"about {needed_bytes / 2**20:.0f} MiB")
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
        for name in os.listdir(path):  # temporaries of a save that was killed mid-write
            if name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX):
                os.unlink(os.path.join(path, name))
    except OSError as err:
        raise UserError(f"--save_dir '{path}' is not writable: {err.strerror}") from None


def parser_for(description):
    return argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
