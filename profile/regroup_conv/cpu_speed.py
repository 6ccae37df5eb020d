"""Benchmark: a regrouped ResNet-18 on the CPU against the dense model, per
layer and end to end, beside the FLOPs ratio of what is executed, with the
slimmed refill ticket of the same mask in the same run.

    python profile/regroup_conv/cpu_speed.py --cn auto [--compile] [--out cpu_speed.json]

For each weight sparsity, one global magnitude step on the initial weights
(BatchNorm statistics set as after training, seeded) makes an unstructured
ticket. `--regroup_unit channel` regroups it (`--cn auto`: parts per layer
from its rows, so every layer gets blocks; the paper's `--cn 8 --b2 16`
leaves the 64- and 128-channel layers without). The deployed form is
kernels.permuted.permuted_model: BatchNorm folded, one grouped convolution
per layer, permutations folded into the next layer where the graph allows;
a layer whose grouped form times slower than its dense convolution on its
real input stays dense (the per-layer choice, timed here). Refill
(magnitude, rate 0) of the same unstructured mask, slimmed, runs beside it.

Like with like: the regrouped model is timed against the dense model with
BatchNorm folded the same way; the slimmed model (it keeps its BatchNorms)
against the plain dense model. All run in turn, after warm-up, channels-last
by default, medians of --repeats (speedups: the median and p10-p90 of each
round's paired ratio, utils.timing.paired_speedup); every model's outputs are checked against
the masked model it implements first. Reported per run: the share of the
dense FLOPs in layers with blocks and the executed FLOPs ratio (dense FLOPs
/ FLOPs the deployed model runs, group padding and dense layers included).
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from models import build_model, model_names  # noqa: E402
from pruner.fold_bn import fold_batchnorm  # noqa: E402
from pruner.magnitude import global_magnitude_prune  # noqa: E402
from pruner.masking import apply_mask, refresh_masked_weights  # noqa: E402
from kernels.permuted import permuted_model  # noqa: E402
from pruner.refill import refill  # noqa: E402
from pruner.slim import slim  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.flops import flops_share, model_flops  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from utils.timing import alternating_samples, medians, paired_speedup  # noqa: E402
from app.report import write_json  # noqa: E402
from bench.tickets import trained_looking  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.93, 0.96])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    RegroupConfig.add_args(p, skip=("nn", "regroup_unit", "partitioner", "round_to"))  # channel blocks only
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--memory_format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="tensor layout for every model (oneDNN is fastest with channels_last)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd (inductor) dense, regrouped and slimmed models")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p


CPU = torch.device("cpu")  # this benchmark measures the CPU path
TOLERANCE = 1e-4  # max abs difference from the masked model (fp32)


def regroup_config(args):
    return RegroupConfig.from_args(args, regroup_unit="channel", seed=0)


def check_args(args):
    regroup_config(args)
    if args.arch not in model_names():
        raise InvalidInput(f"unknown --arch '{args.arch}'; valid: {', '.join(model_names())}")
    for sparsity in args.sparsity:
        if not 0 < sparsity < 1:
            raise InvalidInput(f"--sparsity values must lie strictly between 0 and 1, got {sparsity}")
    for name in ("batch_size", "image_size", "repeats"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name} must be at least 1, got {getattr(args, name)}")


def masked_copy(model, mask):
    model = copy.deepcopy(model)
    apply_mask(model, mask)
    refresh_masked_weights(model)
    return model


def checked(name, model, reference, x):
    diff = (model(x) - reference(x)).abs().max().item()
    if not diff < TOLERANCE:
        raise InvalidInput(f"{name} differs from the masked model it implements by {diff:.2e}")
    return diff


def tickets(base, sparsity, args, x):
    """The models of one sparsity, each checked: {name: (model, max |diff|)},
    the regrouped layers' report and the regroup infos."""
    mask = global_magnitude_prune(copy.deepcopy(base), sparsity)
    ticket = masked_copy(base, mask)
    regrouped_mask, infos = regroup_config(args).regroup(mask)
    masked = masked_copy(base, regrouped_mask)
    regrouped, layers, folded = permuted_model(masked, args.cn, args.b2, example_input=x, repeats=args.repeats)
    refilled = masked_copy(base, refill(ticket, mask, "magnitude", 0.0))
    slimmed = slim(refilled)
    dense_folded = fold_batchnorm(copy.deepcopy(base))[0]
    models = {"dense": (base, 0.0), "dense, BN folded": (dense_folded, checked("dense, BN folded", dense_folded, base, x)),
              "regrouped": (regrouped, checked("regrouped", regrouped, masked, x)),
              "slimmed refill": (slimmed, checked("slimmed refill", slimmed, refilled, x))}
    return models, layers, infos, folded, regrouped_mask


def flops_figures(base, regrouped, layers, shape):
    one = (1,) + tuple(shape[1:])
    with_blocks = [n for n, r in layers.items() if not r["form"].startswith("masked")]
    executed = model_flops(regrouped, one)
    dense = model_flops(base, one)
    return {"dense_mflops": dense / 1e6, "executed_mflops": executed / 1e6, "executed_flops_ratio": dense / executed,
            "share_in_layers_with_blocks": flops_share(base, one, with_blocks)}


def time_models(models, x, repeats, compiled=False):
    calls = {}
    for name, model in models.items():
        if compiled:
            model = torch.compile(model)
            model(x)  # compile outside the timed rounds
        calls[name] = (lambda m: lambda: m(x))(model)
    return alternating_samples(calls, CPU, repeats, warmup=1)


@torch.no_grad()
def main(args):
    check_args(args)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    base = trained_looking(build_model(args.arch, 10, 3)).to(memory_format=fmt)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.rand(shape).contiguous(memory_format=fmt)
    print(f"{environment_line(CPU)} | {args.arch}, input {shape}, {args.memory_format}, unit channel, cn {args.cn} "
          f"b2 {args.b2} t1 {args.t1} | medians of {args.repeats}, alternating; end-to-end speedups: median "
          f"[p10-p90] of the rounds' paired ratios")
    results = {"environment": environment_line(CPU), "args": vars(args), "runs": []}
    for sparsity in args.sparsity:
        checked, layers, infos, folded, regrouped_mask = tickets(base, sparsity, args, x)
        models = {name: model.to(memory_format=fmt).eval() for name, (model, _) in checked.items()}
        diffs = {name: diff for name, (_, diff) in checked.items() if name != "dense"}
        flops = flops_figures(base, models["regrouped"], layers, shape)
        with_blocks = sum(not i.kept_mask for i in infos.values())
        print(f"\nticket sparsity {100 * sparsity:.0f}% -> regrouped masks keep {100 * regrouped_mask.density():.1f}% "
              f"of the weights ({with_blocks}/{len(infos)} layers with blocks, "
              f"{100 * flops['share_in_layers_with_blocks']:.0f}% of the dense FLOPs; {len(folded)} output "
              f"permutations folded into the next conv)")
        print("  checked against the models they implement, max |diff|: "
              + ", ".join(f"{name} {diff:.1e}" for name, diff in diffs.items()))
        print(f"  {'layer':<22} {'parts':>5} {'kept':>6} {'groups':>6} {'dense ms':>9} {'grouped ms':>10} "
              f"{'speedup':>8} {'FLOPs ratio':>11}  runs as")
        for name, row in layers.items():
            info = infos[name]
            timed = "dense_ms" in row
            speed = f"{row['dense_ms'] / row['grouped_ms']:7.2f}x" if timed else f"{'-':>8}"
            print(f"  {name:<22} {info.parts:5d} {100 * info.density_after:5.1f}% {row.get('groups', 0):6d} "
                  f"{row.get('dense_ms', float('nan')):9.2f} {row.get('grouped_ms', float('nan')):10.2f} {speed} "
                  f"{row.get('flops_ratio', 1.0):10.2f}x  {row['form']}")
        run = {"sparsity": sparsity, "kept": regrouped_mask.density(), "layers": layers, "max_abs_diff": diffs, **flops}
        for compiled in ([False, True] if args.compile else [False]):
            samples = time_models(models, x, args.repeats, compiled)
            t = medians(samples)
            label = "compiled (inductor)" if compiled else "eager"
            regrouped = paired_speedup(samples, "dense, BN folded", "regrouped")
            slimmed = paired_speedup(samples, "dense", "slimmed refill")
            speedup = regrouped["median"]
            print(f"  end to end, {label}: " + ", ".join(f"{n} {1e3 * s:.1f} ms" for n, s in t.items()))
            print(f"    regrouped: speedup {speedup:.2f}x [{regrouped['p10']:.2f}-{regrouped['p90']:.2f}] over dense "
                  f"(BN folded), executed FLOPs ratio {flops['executed_flops_ratio']:.2f}x -> "
                  f"{speedup / flops['executed_flops_ratio']:.2f} of it | slimmed refill: {slimmed['median']:.2f}x "
                  f"[{slimmed['p10']:.2f}-{slimmed['p90']:.2f}] over dense")
            run["compiled" if compiled else "eager"] = {
                "ms": {n: 1e3 * s for n, s in t.items()}, "speedup": speedup,
                "speedup_p10": regrouped["p10"], "speedup_p90": regrouped["p90"],
                "of_executed_flops_ratio": speedup / flops["executed_flops_ratio"], "slimmed_speedup": slimmed["median"]}
        results["runs"].append(run)
    if args.out:
        write_json(args.out, results)
        print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
