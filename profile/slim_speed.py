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
same round, with its p10-p90 (utils.timing.paired_speedup). A preset of
profile/end_to_end.py: its tickets, forms and timings are bench.network's.
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
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from bench.layer import environment_line  # noqa: E402
from bench.network import dense_forms, generated_dense, generated_ticket, kept_weights, measure, refill_form  # noqa: E402
from pruner.refill import refill  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
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


def refilled(arch, num_classes, sparsity, round_to):
    """(masked model, its refill mask) at `sparsity`, k rounded to `round_to`."""
    _, masked, mask = generated_ticket(arch, sparsity, num_classes)
    return masked, refill(masked, mask, "magnitude", 0.0, None, round_to)


def same_budget_sparsity(arch, num_classes, sparsity, round_to, steps=24):
    """The lowest sparsity (bisection) at which the ticket rounded to
    `round_to` holds no more weights than the unrounded ticket at `sparsity`."""
    budget = kept_weights(refilled(arch, num_classes, sparsity, 1)[1])
    low, high = sparsity, 1.0 - 1e-6  # weights(low) > budget once rounded; weights(high) <= budget
    for _ in range(steps):
        middle = (low + high) / 2
        if kept_weights(refilled(arch, num_classes, middle, round_to)[1]) <= budget:
            high = middle
        else:
            low = middle
    return high


def ticket_forms(args, sparsity):
    """{label: Form} of the slimmed tickets timed at one sparsity (the
    matched-weights ticket's sparsity in its info as "at")."""
    tickets = [("refill", sparsity, 1)]
    if args.round_to > 1:
        n = args.round_to
        tickets += [(f"round {n}", sparsity, n),
                    (f"round {n}, same weights", same_budget_sparsity(args.arch, args.num_classes, sparsity, n), n)]
    forms = {}
    for label, at, round_to in tickets:
        _, masked, mask = generated_ticket(args.arch, at, args.num_classes)
        forms[label], _ = refill_form(masked, mask, round_to, args.fold_bn, baseline=BASELINE[args.fold_bn])
        forms[label].info["at"] = at
    return forms


BASELINE = {True: "dense, BN folded", False: "dense"}  # the dense model in the form the tickets are timed in


@torch.no_grad()
def main(args):
    if args.round_to < 1:
        raise InvalidInput(f"--round_to must be a positive whole number of channels, got {args.round_to}")
    device = select_device(args.gpu)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    dense = generated_dense(args.arch, args.num_classes)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    print(f"{environment_line(device)} | {args.arch}, input {tuple(shape)} {args.memory_format} | "
          f"{'torch.compile (inductor) on both sides' if args.compile else 'eager'}"
          f"{', BatchNorm folded on both sides' if args.fold_bn else ', BatchNorm as separate layers on both sides'}"
          f" | median of {args.repeats} "
          f"forward passes after warm-up, models timed in turn; speedup: median [p10-p90] of the rounds' "
          f"dense/slim ratios")
    print(f"{'sparsity':>8} {'ticket':<22} {'weights':>10} {'channels kept':>13} {'dense ms':>9} {'slim ms':>8} "
          f"{'speedup':>8} {'p10-p90':>11} {'FLOPs ratio':>11} {'speedup/FLOPs':>13} {'max |diff|':>10}")
    base = BASELINE[args.fold_bn]
    rows, split_rows = [], []
    for sparsity in args.sparsity:
        forms = {**dense_forms(dense, folded=args.fold_bn, unfolded=not args.fold_bn), **ticket_forms(args, sparsity)}
        measured = measure(forms, [args.batch_size], shape[1:], runtimes=["compile" if args.compile else "torch"],
                           repeats=args.repeats, device=device, cuda_graphs=False, memory_format=fmt)
        rows += measured
        dense_ms = next(r["ms"] for r in measured if r["form"] == base)
        for r in (r for r in measured if r["form"] != base):
            print(f"{100 * r['at']:7.1f}% {r['form']:<22} {r['weights']:>10,} {100 * r['channels_kept']:12.1f}% "
                  f"{dense_ms:9.2f} {r['ms']:8.2f} {r['speedup']:7.2f}x {r['speedup_p10']:5.2f}-{r['speedup_p90']:<5.2f} "
                  f"{r['flops_ratio']:10.2f}x {r['speedup'] / r['flops_ratio']:13.2f} {r['check']:10.1e}")
        if device.type == "cpu" and not args.compile:
            x = torch.rand(shape).contiguous(memory_format=fmt)
            models = {name: form.model.to(memory_format=fmt) for name, form in forms.items()}
            split = conv_and_rest_seconds(models, x)
            split_rows += [(r["at"], r["form"], r["flops_ratio"], split[base], split[r["form"]])
                           for r in measured if r["form"] != base]

    if split_rows:
        print("\none forward pass split (ms, medians): convolutions | everything else")
        print(f"{'sparsity':>8} {'ticket':<22} {'dense conv':>10} {'slim conv':>9} {'conv speedup':>12} "
              f"{'conv speedup/FLOPs':>18} {'dense rest':>10} {'slim rest':>9}")
        for sparsity, label, flops_ratio, (dense_conv, dense_rest), (slim_conv, slim_rest) in split_rows:
            print(f"{100 * sparsity:7.1f}% {label:<22} {1e3 * dense_conv:10.2f} {1e3 * slim_conv:9.2f} "
                  f"{dense_conv / slim_conv:11.2f}x {dense_conv / slim_conv / flops_ratio:18.2f} {1e3 * dense_rest:10.2f} "
                  f"{1e3 * slim_rest:9.2f}")
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
