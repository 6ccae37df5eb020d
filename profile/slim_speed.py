"""Benchmark: CPU (or GPU) inference time of a dense model against its
slimmed refill ticket, beside the FLOPs ratio.

    python profile/slim_speed.py --arch res18 --sparsity 0.5 0.8 --batch_size 64 --round_to 16 [--compile] [--no-fold_bn]

For each weight sparsity, a mask is made by one global magnitude step on the
model's initial weights and refilled (magnitude criterion, rate 0): the
channel density refill gives at that sparsity. With --round_to N two more
tickets join: each layer's k rounded up to a multiple of N ("round N"), and
the rounded ticket at the weight budget of the unrounded one ("round N, same
weights": the lowest sparsity whose rounded ticket holds no more weights).
Every slimmed model must give the masked model's outputs (checked); timings
alternate dense / slimmed variants, after warm-up, and report medians; the
speedup is the median over rounds of dense's time over the ticket's in the
same round, with its p10-p90 (utils.timing.paired_speedup).
Speedup / FLOPs ratio near 1 means the slimmed model is as fast as its FLOPs
promise. --compile times torch.compile'd (inductor) dense against compiled
slimmed models.

Both models are timed in their inference form by default: each BatchNorm
folded into the convolution before it (pruner.fold_bn), as ONNX Runtime,
TensorRT and inductor's freezing do to a deployed model, and as
end_to_end.py and cpu_speed.py time the dense model. --no-fold_bn keeps the
BatchNorms as separate operators on both sides (the training-time graph);
their elementwise work shrinks less than the FLOPs (layer 1, where most of
it runs, keeps the most channels), so the ratio reads lower that way.

On the CPU a second table splits a forward pass of each model into the
time spent in conv2d calls and the rest (the models again in turn, so the
dense model's split is measured beside each sparsity's tickets): the convolutions' own speedup is the
most the slimmed model can reach, whatever is done about the rest.
"""
import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from models import build_model  # noqa: E402
from pruner.fold_bn import fold_batchnorm  # noqa: E402
from pruner.magnitude import global_magnitude_prune  # noqa: E402
from pruner.masking import apply_mask  # noqa: E402
from pruner.refill import refill  # noqa: E402
from pruner.slim import slim  # noqa: E402
from utils.flops import model_flops  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from utils.timing import alternating_samples, medians, paired_speedup  # noqa: E402
from utils.runtime import select_device  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--repeats", type=int, default=25, help="timed forward passes per model (rounds)")
    p.add_argument("--memory_format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="tensor layout for both models (oneDNN and cuDNN are fastest with channels_last)")
    p.add_argument("--round_to", type=int, default=1, metavar="N",
                   help="also time tickets whose kept channels are rounded up to a multiple of N")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd dense and slimmed models")
    p.add_argument("--fold_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold BatchNorm into the convolutions of both the dense and the slimmed models, the inference "
                        "form (default); --no-fold_bn times both with their BatchNorm layers")
    p.add_argument("--gpu", type=int, default=None)
    return p


class ConvClock(TorchFunctionMode):
    """Adds up the wall time of every conv2d call made while it is active
    (module or functional, so slimmed blocks' convolutions count too)."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not torch.conv2d:
            return func(*args, **(kwargs or {}))
        tic = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - tic
        return out


def conv_and_rest_seconds(models, x, passes=5):
    """{name: (seconds in convolutions, seconds in everything else)} per CPU
    forward pass of each model, medians of `passes` rounds after one warm-up
    round; a round runs every model once, in turn, so all of them see the
    same state of a shared machine."""
    for model in models.values():
        model(x)
    conv = {name: [] for name in models}
    rest = {name: [] for name in models}
    for _ in range(passes):
        for name, model in models.items():
            with ConvClock() as clock:
                tic = time.perf_counter()
                model(x)
                total = time.perf_counter() - tic
            conv[name].append(clock.seconds)
            rest[name].append(total - clock.seconds)
    return {name: (statistics.median(conv[name]), statistics.median(rest[name])) for name in models}


def refilled(dense, arch, num_classes, sparsity, round_to):
    """(masked model, its refill mask) at `sparsity`, k rounded to `round_to`."""
    masked = build_model(arch, num_classes, 3).eval()
    masked.load_state_dict(dense.state_dict())
    mask = refill(masked, global_magnitude_prune(masked, sparsity), "magnitude", 0.0, None, round_to)
    apply_mask(masked, mask)
    return masked, mask


def kept_weights(mask):
    return sum(int(m.count_nonzero()) for m in mask.values())


def same_budget_sparsity(dense, arch, num_classes, sparsity, round_to, steps=24):
    """The lowest sparsity (bisection) at which the ticket rounded to
    `round_to` holds no more weights than the unrounded ticket at `sparsity`."""
    budget = kept_weights(refilled(dense, arch, num_classes, sparsity, 1)[1])
    low, high = sparsity, 1.0 - 1e-6  # weights(low) > budget once rounded; weights(high) <= budget
    for _ in range(steps):
        middle = (low + high) / 2
        if kept_weights(refilled(dense, arch, num_classes, middle, round_to)[1]) <= budget:
            high = middle
        else:
            low = middle
    return high


def tickets(dense, args, sparsity):
    """[(label, sparsity, masked model, mask)] timed at one sparsity."""
    rows = [("refill", sparsity, *refilled(dense, args.arch, args.num_classes, sparsity, 1))]
    if args.round_to > 1:
        n = args.round_to
        rows.append((f"round {n}", sparsity, *refilled(dense, args.arch, args.num_classes, sparsity, n)))
        matched = same_budget_sparsity(dense, args.arch, args.num_classes, sparsity, n)
        rows.append((f"round {n}, same weights", matched, *refilled(dense, args.arch, args.num_classes, matched, n)))
    return rows


@torch.no_grad()
def main(args):
    if args.round_to < 1:
        sys.exit(f"slim_speed.py: error: --round_to must be a positive whole number of channels, got {args.round_to}")
    device = select_device(args.gpu)
    torch.manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    dense = build_model(args.arch, args.num_classes, 3).eval()
    timed_dense = fold_batchnorm(copy.deepcopy(dense))[0] if args.fold_bn else dense
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    x = torch.rand(shape, device=device).contiguous(memory_format=fmt)
    dense_flops = model_flops(dense, shape)
    prepare = torch.compile if args.compile else (lambda model: model)
    print(f"{environment_line(device)} | {args.arch}, input {tuple(shape)} {args.memory_format} | "
          f"{'torch.compile (inductor) on both sides' if args.compile else 'eager'}"
          f"{', BatchNorm folded on both sides' if args.fold_bn else ', BatchNorm as separate layers on both sides'}"
          f" | median of {args.repeats} "
          f"forward passes after warm-up, models timed in turn; speedup: median [p10-p90] of the rounds' "
          f"dense/slim ratios")
    print(f"{'sparsity':>8} {'ticket':<22} {'weights':>10} {'channels kept':>13} {'dense ms':>9} {'slim ms':>8} "
          f"{'speedup':>8} {'p10-p90':>11} {'FLOPs ratio':>11} {'speedup/FLOPs':>13} {'max |diff|':>10}")
    d = prepare(timed_dense.to(device, memory_format=fmt))
    split_rows = []
    for sparsity in args.sparsity:
        rows = []
        for label, at, masked, mask in tickets(dense, args, sparsity):
            slimmed = slim(masked, fold_bn=args.fold_bn)
            flops_ratio = dense_flops / model_flops(slimmed, shape)
            slimmed = prepare(slimmed.to(device, memory_format=fmt).eval())
            diff = (slimmed(x) - masked.to(device, memory_format=fmt)(x)).abs().max().item()
            kept = sum(int(m.flatten(1).amax(1).sum()) for m in mask.values()) / sum(m.shape[0] for m in mask.values())
            rows.append((label, at, kept_weights(mask), kept, slimmed, flops_ratio, diff))
        fns = {"dense": lambda: d(x), **{row[0]: (lambda m=row[4]: m(x)) for row in rows}}
        samples = alternating_samples(fns, device, args.repeats, warmup=3)
        median = medians(samples)
        if device.type == "cpu" and not args.compile:
            split = conv_and_rest_seconds({"dense": d, **{row[0]: row[4] for row in rows}}, x)
            split_rows += [(at, label, flops_ratio, split["dense"], split[label])
                           for label, at, _, _, _, flops_ratio, _ in rows]
        for label, at, weights, kept, slimmed, flops_ratio, diff in rows:
            speedup = paired_speedup(samples, "dense", label)
            print(f"{100 * at:7.1f}% {label:<22} {weights:>10,} {100 * kept:12.1f}% {1e3 * median['dense']:9.2f} "
                  f"{1e3 * median[label]:8.2f} {speedup['median']:7.2f}x {speedup['p10']:5.2f}-{speedup['p90']:<5.2f} "
                  f"{flops_ratio:10.2f}x {speedup['median'] / flops_ratio:13.2f} "
                  f"{diff:10.1e}")

    if split_rows:
        print("\none forward pass split (ms, medians): convolutions | everything else")
        print(f"{'sparsity':>8} {'ticket':<22} {'dense conv':>10} {'slim conv':>9} {'conv speedup':>12} "
              f"{'conv speedup/FLOPs':>18} {'dense rest':>10} {'slim rest':>9}")
        for sparsity, label, flops_ratio, (dense_conv, dense_rest), (slim_conv, slim_rest) in split_rows:
            print(f"{100 * sparsity:7.1f}% {label:<22} {1e3 * dense_conv:10.2f} {1e3 * slim_conv:9.2f} "
                  f"{dense_conv / slim_conv:11.2f}x {dense_conv / slim_conv / flops_ratio:18.2f} {1e3 * dense_rest:10.2f} "
                  f"{1e3 * slim_rest:9.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
