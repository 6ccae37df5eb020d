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
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import build_model, model_names  # noqa: E402
from kernels.grouped import grouped_model  # noqa: E402
from pruner.magnitude import global_magnitude_prune  # noqa: E402
from pruner.masking import apply_mask  # noqa: E402
from pruner.refill import refill  # noqa: E402
from pruner.slim import slim  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.flops import model_flops  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from utils.timing import alternating_samples, medians, paired_speedup  # noqa: E402
from app.onnx_export import INPUT_NAME, export_onnx, onnx_modules, ort_session  # noqa: E402
from utils.runtime import select_device  # noqa: E402
from bench.tickets import trained_looking  # noqa: E402


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


def variants(dense, args, sparsity):
    """{name: eval-mode CPU model} at one sparsity, dense included."""
    def masked_copy():
        model = build_model(args.arch, args.num_classes, 3).eval()
        model.load_state_dict(dense.state_dict())
        return model, global_magnitude_prune(model, sparsity)

    out = {"dense": dense}
    for round_to in sorted({1, args.round_to}):
        model, mask = masked_copy()
        apply_mask(model, refill(model, mask, "magnitude", 0.0, None, round_to))
        out["slim" if round_to == 1 else f"slim, round {round_to}"] = slim(model)
    model, mask = masked_copy()
    new_mask, _ = RegroupConfig.from_args(args, regroup_unit="channel", round_to=1, seed=0).regroup(mask)
    apply_mask(model, new_mask)
    out["regrouped"] = grouped_model(model, "channel", args.cn, args.b2)[0]
    return out


def runtimes():
    _, ort = onnx_modules()
    available = ort.get_available_providers()
    return ["PyTorch", "ORT CPU"] + (["ORT CUDA"] if "CUDAExecutionProvider" in available else [])


@torch.no_grad()
def main(args):
    if args.round_to < 1 or min(args.batch_size) < 1 or args.repeats < 1:
        raise InvalidInput("--round_to, --batch_size and --repeats must be positive")
    if args.arch not in model_names():
        raise InvalidInput(f"unknown --arch '{args.arch}'; valid: {', '.join(model_names())}")
    device = select_device(args.gpu)
    torch.manual_seed(0)
    dense = trained_looking(build_model(args.arch, args.num_classes, 3))
    kinds = runtimes()
    print(f"{environment_line(device)} | onnxruntime {onnx_modules()[1].__version__} | {args.arch} | runtimes: "
          f"{', '.join(kinds)} (PyTorch on {device}) | median of {args.repeats} runs after warm-up, all models and "
          f"runtimes in turn; speedup: median of the rounds' dense/model ratios")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in args.sparsity:
            models = variants(dense, args, sparsity)
            probe = torch.rand(3, 3, args.image_size, args.image_size)
            sessions, flops = {}, {}
            for name, model in models.items():
                path = os.path.join(folder, f"{len(sessions)}.onnx")
                export_onnx(model, [probe[:2], probe, probe[:1]], path)
                sessions[name] = {kind: ort_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"]
                                                    if kind == "ORT CUDA" else ["CPUExecutionProvider"])
                                  for kind in kinds if kind != "PyTorch"}
                flops[name] = model_flops(model, (1, 3, args.image_size, args.image_size))
            on_device = {name: model.to(device) for name, model in models.items()}
            for batch in args.batch_size:
                x = torch.rand(batch, 3, args.image_size, args.image_size)
                x_device, x_numpy = x.to(device), x.numpy()
                fns = {}
                for name in models:
                    fns[(name, "PyTorch")] = lambda m=on_device[name]: m(x_device)
                    for kind, session in sessions[name].items():
                        fns[(name, kind)] = lambda s=session: s.run(None, {INPUT_NAME: x_numpy})
                samples = alternating_samples(fns, device, args.repeats, warmup=3)
                median = medians(samples)
                header = f"{'sparsity':>8} {'batch':>5} {'model':<16} {'FLOPs ratio':>11}" + "".join(
                    f" {kind + ' ms':>12} {'speedup':>8}" for kind in kinds)
                print(header)
                for name in models:
                    row = {"sparsity": sparsity, "batch": batch, "model": name, "flops_ratio": flops["dense"] / flops[name]}
                    line = f"{100 * sparsity:7.0f}% {batch:5d} {name:<16} {row['flops_ratio']:10.2f}x"
                    for kind in kinds:
                        seconds = median[(name, kind)]
                        speedup = paired_speedup(samples, ("dense", kind), (name, kind))
                        row[kind] = {"ms": 1e3 * seconds, "speedup": speedup["median"],
                                     "speedup_p10": speedup["p10"], "speedup_p90": speedup["p90"]}
                        line += f" {1e3 * seconds:12.2f} {row[kind]['speedup']:7.2f}x"
                    results.append(row)
                    print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment_line(device), "args": vars(args), "rows": results}, f, indent=1)
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
