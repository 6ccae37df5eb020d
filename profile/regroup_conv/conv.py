"""Regroup one layer, run it through a regrouped-convolution kernel, check
it against F.conv2d on the regrouped weight and time it against the vendor
convolution of the same layer.

    python profile/regroup_conv/conv.py --kernel_file runs/layers/layer3.0.conv2.pth.tar --batch_size 1 64 256
    python profile/regroup_conv/conv.py --kernel_file ... --kernel cuda --dtype fp32
    python profile/regroup_conv/conv.py --build-only          # compile the CUDA C kernel (no GPU needed)

On a GPU (utils/structured_bench.compare_layer): --kernel triton (default)
or cuda (the CUDA C reference: fp32 FMA on NCHW copies of the inputs)
against cuDNN, both in --dtype (fp32 = TF32 off, tf32, fp16, bf16; the TF32
switches printed), channels-last, cudnn.benchmark on; outputs checked
against float64 into a poisoned buffer first; CUDA-graph replays over
rotating inputs larger than the L2 cache, median and p10-p90 of --repeats.
Without a GPU: the CPU path (a grouped convolution over gathered channels
for --regroup_unit channel, im2col products for weight) against oneDNN in
fp32, alternating medians, relative error < 1e-4.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.regrouped import RegroupedConv2d  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from bench.gpu import PRECISIONS, precision_line, versions, versions_line  # noqa: E402
from bench.layer import add_shape_args, environment_line, load_layer  # noqa: E402
from utils.timing import alternating_medians  # noqa: E402
from utils.runtime import select_device  # noqa: E402

MAX_RELATIVE_ERROR = 1e-4  # fp32


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    p.add_argument("--build-only", dest="build_only", action="store_true",
                   help="compile the CUDA kernel and exit (works without a GPU)")
    RegroupConfig.add_args(p)
    p.add_argument("--seed", type=int, default=0, help="the partitioner's seed")
    g = p.add_argument_group("GPU")
    g.add_argument("--kernel", default="triton", choices=["triton", "cuda"], help="the regrouped kernel on a GPU")
    g.add_argument("--dtype", default=None, choices=list(PRECISIONS),
                   help="precision of both sides (default: tf32 on a GPU, as cuDNN's default; fp32 on the CPU)")
    return p


def parse(argv=None):
    parser = get_args_parser()
    if argv is None:
        argv = sys.argv[1:]
    if "--build-only" in argv:  # --kernel_file is not needed to compile
        for action in parser._actions:
            if action.dest == "kernel_file":
                action.required = False
    return parser, parser.parse_args(argv)


@torch.no_grad()
def main(args):
    if args.build_only:
        from kernels.cuda_build import build_regroup_kernel, target_archs
        kernel = build_regroup_kernel()
        print(f"built {kernel.path} (operator torch.ops.{kernel.name}.forward) for sm_{'/sm_'.join(target_archs())} with CUDA {torch.version.cuda}")
        return None
    regroup = RegroupConfig.from_args(args)
    weight, geo = load_layer(args)
    mask = (weight != 0).float()
    new_mask, info = regroup.regroup_layer(mask)
    if info.kept_mask:
        raise InvalidInput(f"'{args.kernel_file}' has no dense block with t1 {args.t1}, cn {args.cn}, b2 {args.b2} "
                        f"({weight.shape[0]} rows): nothing to run; try a smaller --b2 or --cn")
    device = select_device(args.gpu)
    regrouped_weight = weight * new_mask
    print(f"{args.kernel_file}: weight {tuple(weight.shape)}, stride {geo['stride']}, padding {geo['padding']}, "
          f"unit {args.regroup_unit} | {len(info.blocks)} blocks | density {100 * info.density_before:.2f}% -> "
          f"{100 * info.density_after:.2f}% | nonzeros kept {100 * info.nonzeros_kept:.2f}%")
    if device.type == "cuda":
        return gpu_rows(args, regrouped_weight, info, geo, device)
    if args.dtype not in (None, "fp32"):
        raise InvalidInput(f"--dtype {args.dtype}: the CPU path computes in fp32 (other precisions need a GPU)")
    print(environment_line(device))
    speedups = {}
    conv = RegroupedConv2d(regrouped_weight, info.blocks, args.regroup_unit, geo["stride"], geo["padding"])
    for batch in geo["batches"]:
        x = torch.randn(batch, weight.shape[1], geo["height"], geo["width"])
        reference = F.conv2d(x, regrouped_weight, None, geo["stride"], geo["padding"])
        error = ((conv(x) - reference).abs().max() / reference.abs().max().clamp(min=1e-12)).item()
        if not error < MAX_RELATIVE_ERROR:
            raise InvalidInput(f"the CPU path disagrees with F.conv2d: relative error {error:.2e} >= {MAX_RELATIVE_ERROR:g}")
        medians = alternating_medians({"regroup": lambda: conv(x), "dense": lambda: F.conv2d(
            x, regrouped_weight, None, geo["stride"], geo["padding"])}, device, args.repeats, warmup=5)
        t_regroup, t_dense = medians["regroup"], medians["dense"]
        speedups[batch] = t_dense / t_regroup
        print(f"  input {tuple(x.shape)} | relative error {error:.1e} | CPU path {1e3 * t_regroup:.3f} ms | oneDNN dense "
              f"{1e3 * t_dense:.3f} ms | speedup {speedups[batch]:.2f}x (median of {args.repeats})")
    return speedups


def gpu_rows(args, regrouped_weight, info, geo, device):
    """The GPU comparison per batch size; returns {batch: cuDNN time / kernel time}."""
    from bench.tickets import compare_layer
    precision = args.dtype or "tf32"
    print(versions_line(versions()))
    speedups = {}
    for batch in geo["batches"]:
        shape = (batch, regrouped_weight.shape[1], geo["height"], geo["width"])
        row = compare_layer(regrouped_weight, info.blocks, args.regroup_unit, geo["stride"], geo["padding"], (1, 1),
                            shape, precision, (args.kernel,), args.repeats, device=device, seed=args.seed)
        if batch == geo["batches"][0]:
            print(precision_line(precision))
        kernel, cudnn = row[args.kernel], row["cudnn"]
        if not kernel["ok"]:
            raise InvalidInput(f"the {args.kernel} kernel disagrees with F.conv2d in {precision}: relative error "
                            f"{kernel['error']:.2e}")
        speedups[batch] = 1 / kernel["vs_cudnn"]
        print(f"  input {shape} | relative error {kernel['error']:.1e} | {args.kernel} {kernel['ms']:.4f} ms "
              f"[{kernel['p10']:.4f}-{kernel['p90']:.4f}] | cuDNN {cudnn['ms']:.4f} ms [{cudnn['p10']:.4f}-"
              f"{cudnn['p90']:.4f}] | {args.kernel} / cuDNN {kernel['vs_cudnn']:.2f} (CUDA-graph medians of "
              f"{args.repeats}, {row['buffers']} rotating inputs)")
    return speedups


if __name__ == "__main__":
    parser, parsed = parse()
    run_cli(main, parser, sys.argv[1:])
