"""Benchmark: dense vs structured tickets in ONNX Runtime and in PyTorch.

    python profile/onnx_speed.py --arch res18 --sparsity 0.8 --round_to 16 --batch_size 1 64

At each weight sparsity a mask is made by one global magnitude step on the
model's initial weights (BatchNorm statistics moved off their defaults, so
removed channels leave constants behind as in a trained ticket), then:
- "slim": refilled (magnitude criterion) and slimmed;
- "slim, round N": the same with each layer's kept channels rounded up to a
  multiple of --round_to;
- "regrouped": regrouped with --regroup_unit channel (--cn, --b2, --nn,
  --t1) into gathers and grouped convolutions (kernels.grouped); layers
  without blocks stay masked dense convolutions.
Every model is exported with app.onnx_export.export_onnx (checked by
onnx.checker and against PyTorch in ONNX Runtime, dynamic batch). Then per
batch size all models run in turn in every runtime — PyTorch eager,
ONNX Runtime's CPU provider, and its CUDA provider where installed — after
warm-up, and the medians are printed with each model's speedup over dense in
the same runtime (the median over rounds of dense's time over the model's;
its p10-p90 goes to --out), beside the FLOPs ratio of what the model executes.
A preset of profile/end_to_end.py: tickets, forms, exports and timings are
bench.network's (`--runtime torch onnxruntime` there).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from app.config import RegroupConfig  # noqa: E402
from app.onnx_export import onnx_modules  # noqa: E402
from app.report import write_json  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from bench.network import dense_forms, generated_ticket, measure, refill_form, regroup_form  # noqa: E402
from models import model_names  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.runtime import select_device  # noqa: E402

def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18", help=f"one of: {', '.join(model_names())}")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.8])
    p.add_argument("--round_to", type=int, default=16, metavar="N", help="channel multiple of the rounded slim ticket")
    p.add_argument("--batch_size", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=15, help="timed runs per model and runtime (medians)")
    RegroupConfig.add_args(p, skip=("regroup_unit", "partitioner"))  # the channel unit: ONNX has grouped convs
    p.add_argument("--gpu", type=int, default=None, help="run the PyTorch side on this GPU")
    p.add_argument("--out", default=None, help="also write the table as JSON to this file")
    return p


KINDS = {"torch": "PyTorch", "onnxruntime": "ORT CPU", "onnxruntime-cuda": "ORT CUDA"}  # runtime -> column


def ticket_forms(args, sparsity, image_shape):
    """{name: Form} at one sparsity, dense included (bench.network)."""
    dense, masked, mask = generated_ticket(args.arch, sparsity, args.num_classes)
    forms = dense_forms(dense, folded=False)
    for round_to in sorted({1, args.round_to}):
        name = "slim" if round_to == 1 else f"slim, round {round_to}"
        forms[name], _ = refill_form(masked, mask, round_to, fold_bn=False)
    regroup = RegroupConfig.from_args(args, regroup_unit="channel", round_to=1, seed=0)
    forms["regrouped"], _, _ = regroup_form(masked, mask, regroup, "grouped", image_shape)
    return forms


def runtimes():
    _, ort = onnx_modules()
    available = ort.get_available_providers()
    return ["torch", "onnxruntime"] + (["onnxruntime-cuda"] if "CUDAExecutionProvider" in available else [])


@torch.no_grad()
def main(args):
    if args.round_to < 1 or min(args.batch_size) < 1 or args.repeats < 1:
        raise InvalidInput("--round_to, --batch_size and --repeats must be positive")
    if args.arch not in model_names():
        raise InvalidInput(f"unknown --arch '{args.arch}'; valid: {', '.join(model_names())}")
    device = select_device(args.gpu)
    kinds = runtimes()
    image_shape = (3, args.image_size, args.image_size)
    print(f"{environment_line(device)} | onnxruntime {onnx_modules()[1].__version__} | {args.arch} | runtimes: "
          f"{', '.join(KINDS[k] for k in kinds)} (PyTorch on {device}) | median of {args.repeats} runs after "
          f"warm-up, all models and runtimes in turn; speedup: median of the rounds' dense/model ratios")
    results = []
    for sparsity in args.sparsity:
        forms = ticket_forms(args, sparsity, image_shape)
        rows = measure(forms, args.batch_size, image_shape, runtimes=kinds, repeats=args.repeats, device=device,
                       cuda_graphs=False, memory_format=torch.contiguous_format)
        for batch in args.batch_size:
            print(f"{'sparsity':>8} {'batch':>5} {'model':<16} {'FLOPs ratio':>11}" + "".join(
                f" {KINDS[kind] + ' ms':>12} {'speedup':>8}" for kind in kinds))
            for name in forms:
                mine = {r["runtime"]: r for r in rows if r["batch"] == batch and r["form"] == name}
                row = {"sparsity": sparsity, "batch": batch, "model": name,
                       "flops_ratio": next(iter(mine.values()))["flops_ratio"]}
                line = f"{100 * sparsity:7.0f}% {batch:5d} {name:<16} {row['flops_ratio']:10.2f}x"
                for kind in kinds:
                    r = mine[kind]
                    reference = r["speedup"] is None  # dense, against itself: exactly 1
                    speedup = 1.0 if reference else r["speedup"]
                    row[KINDS[kind]] = {"ms": r["ms"], "speedup": speedup,
                                        "speedup_p10": 1.0 if reference else r["speedup_p10"],
                                        "speedup_p90": 1.0 if reference else r["speedup_p90"]}
                    line += f" {r['ms']:12.2f} {speedup:7.2f}x"
                results.append(row)
                print(line)
    if args.out:
        write_json(args.out, {"environment": environment_line(device), "args": vars(args), "rows": results})
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
