"""Benchmark: what an IMP run's training costs on this machine, whole epochs against the step alone.

    python profile/training_speed.py --arch res18 --dataset synthetic-cifar --images 2048 --batch_size 128 --sparsity 0.8

For one model, batch size and device, dense and masked (an IMP ticket at
--sparsity: masks ride on torch.nn.utils.prune, weight = orig * mask on
every forward), in images per second:
- the training step alone on random data already on the device: the ceiling;
- a whole training epoch (app.training's loop: its step, its tallies, its
  host reads) fed by the per-image path (DataLoader, --workers) and by the
  device-resident path (in-memory datasets), with the share of the ceiling
  each reaches;
- the batches alone, per CPU core (one thread, no loader workers): the
  per-image pipeline against the device-resident one.
Epochs run in rounds that alternate models and paths after a warm-up
round; figures are the median and p10-p90 of --repeats rounds.

--dataset: digits, cifar10/cifar100 (--data), synthetic-cifar (--images random
CIFAR-shaped images held in memory, CIFAR's transforms) or synthetic-jpeg
(--images random JPEGs of --image_size in ImageNet folders, its reader).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.datasets import dataset_names, load_dataset  # noqa: E402
from app.report import write_json  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from bench.training import (dense_and_masked, epoch_rows, epoch_table, loader_rows, synthetic_cifar,  # noqa: E402
                            synthetic_jpeg_folders)
from models import model_names  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.runtime import select_device  # noqa: E402

SYNTHETIC = ("synthetic-cifar", "synthetic-jpeg")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18")
    p.add_argument("--dataset", default="synthetic-cifar", help=f"one of: {', '.join(dataset_names() + list(SYNTHETIC))}")
    p.add_argument("--data", default="datasets", help="dataset location (digits and synthetic data need none)")
    p.add_argument("--images", type=int, default=2048, help="training images of the synthetic datasets")
    p.add_argument("--image_size", type=int, default=224, help="side of synthetic-jpeg's images before cropping")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of conv weights pruned in the masked model")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per model and path")
    p.add_argument("--workers", type=int, default=None, help="per-image loader workers (default: the training's)")
    p.add_argument("--no_amp", dest="amp", action="store_false", help="full precision on CUDA")
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    return p


def check_args(args):
    if args.arch not in model_names():
        raise InvalidInput(f"unknown --arch '{args.arch}'; valid: {', '.join(model_names())}")
    if args.dataset not in dataset_names() + list(SYNTHETIC):
        raise InvalidInput(f"unknown --dataset '{args.dataset}'; valid: {', '.join(dataset_names() + list(SYNTHETIC))}")
    if not 0 < args.sparsity < 1:
        raise InvalidInput(f"--sparsity must lie strictly between 0 and 1, got {args.sparsity}")
    for name in ("images", "image_size", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name} must be at least 1, got {getattr(args, name)}")


def measure(args, data, device):
    """(epoch rows, loader rates) of one dataset on one device."""
    models = dense_and_masked(args.arch, data.spec, args.sparsity)
    print(f"{environment_line(device)} | {args.arch} on {args.dataset}, batch {args.batch_size}, "
          f"{len(data.train)} images an epoch, masked at {100 * args.sparsity:.0f}% | medians [p10-p90] of "
          f"{args.repeats} epochs, alternating")
    rows = epoch_rows(models, data, args.batch_size, device, repeats=args.repeats, workers=args.workers, amp=args.amp)
    print("\n".join(epoch_table(rows)))
    rates = loader_rows(data, args.batch_size, device)
    if len(rates) == 2:
        per_image, resident = rates["per-image"], rates["device-resident"]
        print(f"  batches alone, one CPU thread: per-image {per_image:.0f} images/s, device-resident {resident:.0f} "
              f"images/s: {resident / per_image:.1f}x")
    return rows, rates


def main(args):
    check_args(args)
    device = select_device(args.gpu)
    with tempfile.TemporaryDirectory() as folder:
        if args.dataset == "synthetic-cifar":
            data = synthetic_cifar(args.images)
        elif args.dataset == "synthetic-jpeg":
            data = synthetic_jpeg_folders(folder, args.images, args.image_size)
        else:
            data = load_dataset(args.dataset, args.data)
        rows, rates = measure(args, data, device)
    result = {"environment": environment_line(device), "args": vars(args), "rows": rows, "loader_images_per_s": rates}
    if args.out:
        write_json(args.out, result)
        print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
