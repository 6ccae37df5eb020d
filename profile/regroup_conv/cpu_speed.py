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
against the plain dense model. A preset of profile/end_to_end.py: tickets,
forms and timings are bench.network's. All run in turn, after warm-up, channels-last
by default, medians of --repeats (speedups: the median and p10-p90 of each
round's paired ratio, utils.timing.paired_speedup); every model's outputs are checked against
the masked model it implements first. Reported per run: the share of the
dense FLOPs in layers with blocks and the executed FLOPs ratio (dense FLOPs
/ FLOPs the deployed model runs, group padding and dense layers included).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from app.config import RegroupConfig  # noqa: E402
from app.report import write_json  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from bench.network import dense_forms, generated_ticket, measure, refill_form, regroup_form  # noqa: E402
from models import model_names  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.flops import flops_share  # noqa: E402

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


def ticket_forms(args, sparsity, x):
    """{name: Form} of one sparsity (bench.network), the regrouped layers'
    infos and the regrouped mask."""
    dense, masked, mask = generated_ticket(args.arch, sparsity)
    forms = dense_forms(dense)
    forms["regrouped"], regrouped_mask, infos = regroup_form(masked, mask, regroup_config(args), "permuted",
                                                             x.shape[1:], x, args.repeats)
    forms["slimmed refill"], _ = refill_form(masked, mask, fold_bn=False)  # keeps its BatchNorms: against plain dense
    return forms, infos, regrouped_mask


@torch.no_grad()
def main(args):
    check_args(args)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.rand(shape).contiguous(memory_format=fmt)
    print(f"{environment_line(CPU)} | {args.arch}, input {shape}, {args.memory_format}, unit channel, cn {args.cn} "
          f"b2 {args.b2} t1 {args.t1} | medians of {args.repeats}, alternating; end-to-end speedups: median "
          f"[p10-p90] of the rounds' paired ratios")
    results = {"environment": environment_line(CPU), "args": vars(args), "runs": []}
    one = (1,) + shape[1:]
    for sparsity in args.sparsity:
        forms, infos, regrouped_mask = ticket_forms(args, sparsity, x)
        info = forms["regrouped"].info
        layers = info["per_layer"]
        rows = measure(forms, [args.batch_size], shape[1:], runtimes=["torch", "compile"] if args.compile else ["torch"],
                       repeats=args.repeats, memory_format=fmt, warmup=1)
        regrouped_row = next(r for r in rows if r["form"] == "regrouped")
        with_blocks = [n for n, r in layers.items() if not r["form"].startswith("masked")]
        flops = {"dense_mflops": regrouped_row["executed_mflops"] * regrouped_row["flops_ratio"],
                 "executed_mflops": regrouped_row["executed_mflops"],
                 "executed_flops_ratio": regrouped_row["flops_ratio"],
                 "share_in_layers_with_blocks": flops_share(forms["dense"].model, one, with_blocks)}
        diffs = {r["form"]: r["check"] for r in rows if r["check"] is not None and r["runtime"] == "torch"}
        print(f"\nticket sparsity {100 * sparsity:.0f}% -> regrouped masks keep {100 * regrouped_mask.density():.1f}% "
              f"of the weights ({info['layers_with_blocks']}/{info['layers']} layers with blocks, "
              f"{100 * flops['share_in_layers_with_blocks']:.0f}% of the dense FLOPs; {info['folded_chains']} output "
              f"permutations folded into the next conv)")
        print("  checked against the models they implement, max |diff|: "
              + ", ".join(f"{name} {diff:.1e}" for name, diff in diffs.items()))
        print(f"  {'layer':<22} {'parts':>5} {'kept':>6} {'groups':>6} {'dense ms':>9} {'grouped ms':>10} "
              f"{'speedup':>8} {'FLOPs ratio':>11}  runs as")
        for name, row in layers.items():
            layer = infos[name]
            timed = "dense_ms" in row
            speed = f"{row['dense_ms'] / row['grouped_ms']:7.2f}x" if timed else f"{'-':>8}"
            print(f"  {name:<22} {layer.parts:5d} {100 * layer.density_after:5.1f}% {row.get('groups', 0):6d} "
                  f"{row.get('dense_ms', float('nan')):9.2f} {row.get('grouped_ms', float('nan')):10.2f} {speed} "
                  f"{row.get('flops_ratio', 1.0):10.2f}x  {row['form']}")
        run = {"sparsity": sparsity, "kept": regrouped_mask.density(), "layers": layers, "max_abs_diff": diffs, **flops}
        for runtime in (["torch", "compile"] if args.compile else ["torch"]):
            mine = {r["form"]: r for r in rows if r["runtime"] == runtime}
            regrouped, slimmed = mine["regrouped"], mine["slimmed refill"]
            label = "compiled (inductor)" if runtime == "compile" else "eager"
            speedup = regrouped["speedup"]
            print(f"  end to end, {label}: " + ", ".join(f"{n} {r['ms']:.1f} ms" for n, r in mine.items()))
            print(f"    regrouped: speedup {speedup:.2f}x [{regrouped['speedup_p10']:.2f}-{regrouped['speedup_p90']:.2f}] "
                  f"over dense (BN folded), executed FLOPs ratio {flops['executed_flops_ratio']:.2f}x -> "
                  f"{speedup / flops['executed_flops_ratio']:.2f} of it | slimmed refill: {slimmed['speedup']:.2f}x "
                  f"[{slimmed['speedup_p10']:.2f}-{slimmed['speedup_p90']:.2f}] over dense")
            run["compiled" if runtime == "compile" else "eager"] = {
                "ms": {n: r["ms"] for n, r in mine.items()}, "speedup": speedup,
                "speedup_p10": regrouped["speedup_p10"], "speedup_p90": regrouped["speedup_p90"],
                "of_executed_flops_ratio": speedup / flops["executed_flops_ratio"],
                "slimmed_speedup": slimmed["speedup"]}
        results["runs"].append(run)
    if args.out:
        write_json(args.out, results)
        print(f"\nwritten: {args.out}")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
