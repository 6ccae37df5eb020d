"""Regroup one layer, run it through the regrouped-convolution kernel, check
it against F.conv2d on the regrouped weight and time it against the vendor
convolution of the same layer.

    python profile/regroup_conv/conv.py --kernel_file runs/layers/layer3.0.conv2.pth.tar --batch_size 64
    python profile/regroup_conv/conv.py --build-only          # compile the CUDA kernel (no GPU needed)

On a GPU: the CUDA kernel (compiled by nvcc on first use, cached by content)
against cuDNN in benchmark mode. Without a GPU: the CPU path (per-block
convolutions for --regroup_unit channel, im2col products for weight) against
oneDNN. Both: warm-up, median of --repeats runs, relative error < 1e-4.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.regrouped import RegroupedConv2d  # noqa: E402
from pruner.regroup import check_regroup_args, regroup_layer  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.layer_bench import add_shape_args, environment_line, load_layer, alternating_medians  # noqa: E402
from utils.runtime import select_device  # noqa: E402

MAX_RELATIVE_ERROR = 1e-4  # fp32


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    p.add_argument("--build-only", dest="build_only", action="store_true",
                   help="compile the CUDA kernel and exit (works without a GPU)")
    g = p.add_argument_group("regroup")
    g.add_argument("--t1", type=float, default=1.5)
    g.add_argument("--cn", type=int, default=8)
    g.add_argument("--nn", type=int, default=32)
    g.add_argument("--b2", type=int, default=16)
    g.add_argument("--regroup_unit", default="weight", choices=["weight", "channel"])
    g.add_argument("--seed", type=int, default=0)
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
        from utils.cuda_build import build_regroup_kernel, target_archs
        module = build_regroup_kernel()
        print(f"built {module.__file__} for sm_{'/sm_'.join(target_archs())} with CUDA {torch.version.cuda}")
        return None
    check_regroup_args(args.t1, args.cn, args.nn, args.b2, args.regroup_unit)
    weight, geo = load_layer(args)
    mask = (weight != 0).float()
    new_mask, info = regroup_layer(mask, args.t1, args.cn, args.nn, args.b2, args.seed, unit=args.regroup_unit)
    if info.kept_mask:
        raise UserError(f"'{args.kernel_file}' has no dense block with t1 {args.t1}, cn {args.cn}, b2 {args.b2} "
                        f"({weight.shape[0]} rows): nothing to run; try a smaller --b2 or --cn")
    device = select_device(args.gpu)
    torch.backends.cudnn.benchmark = True
    regrouped_weight = (weight * new_mask).to(device)
    conv = RegroupedConv2d(regrouped_weight.cpu(), info.blocks, args.regroup_unit, geo["stride"], geo["padding"]).to(device)
    x = torch.randn(geo["batch"], weight.shape[1], geo["height"], geo["width"], device=device)
    reference = F.conv2d(x, regrouped_weight, None, geo["stride"], geo["padding"])
    got = conv(x)
    error = ((got - reference).abs().max() / reference.abs().max().clamp(min=1e-12)).item()
    path = "CUDA kernel" if device.type == "cuda" else "CPU path"
    if not error < MAX_RELATIVE_ERROR:
        raise UserError(f"the {path} disagrees with F.conv2d: relative error {error:.2e} >= {MAX_RELATIVE_ERROR:g}")
    medians = alternating_medians({"regroup": lambda: conv(x), "dense": lambda: F.conv2d(
        x, regrouped_weight, None, geo["stride"], geo["padding"])}, device, args.repeats, warmup=5)
    t_regroup, t_dense = medians["regroup"], medians["dense"]
    vendor = "cuDNN" if device.type == "cuda" else "oneDNN"
    print(environment_line(device))
    print(f"{args.kernel_file}: weight {tuple(weight.shape)}, input {tuple(x.shape)}, stride {geo['stride']}, "
          f"padding {geo['padding']}, unit {args.regroup_unit}")
    print(f"  {len(info.blocks)} blocks | density {100 * info.density_before:.2f}% -> {100 * info.density_after:.2f}% | "
          f"nonzeros kept {100 * info.nonzeros_kept:.2f}% | relative error {error:.1e}")
    print(f"  {path} {1e3 * t_regroup:.3f} ms | {vendor} dense {1e3 * t_dense:.3f} ms | "
          f"speedup {t_dense / t_regroup:.2f}x (median of {args.repeats})")
    return t_dense / t_regroup


if __name__ == "__main__":
    parser, parsed = parse()
    run_cli(main, parser, sys.argv[1:])
