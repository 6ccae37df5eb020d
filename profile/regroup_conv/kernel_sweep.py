"""Time every Triton configuration (variant and tiles) of the regrouped-convolution kernel
on ResNet-18 layers against cuDNN (GPU only): what the tuner chooses from,
and where a new configuration would pay.

    python profile/regroup_conv/kernel_sweep.py --layers layer1.0.conv1 layer3.0.conv2 --precision bf16

Tickets as in profile/gpu_check.py (one seeded global magnitude step at
--sparsity, each layer regrouped with parts of ~--rows_per_part rows); each
configuration is checked against F.conv2d, then timed by CUDA-graph replays
over rotating inputs. With --once, each layer runs each configuration once
and nothing is timed (for a profiler such as ncu).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import triton_conv  # noqa: E402
from kernels.regrouped import RegroupedConv2d  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from bench.gpu import apply_precision, precision_line, relative_error, rotating_inputs  # noqa: E402
from utils.timing import graph_timings  # noqa: E402
from bench.tickets import TOLERANCE, resnet18_tickets  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", default=["layer1.0.conv1", "layer2.0.conv2", "layer3.0.conv2"])
    p.add_argument("--sparsity", type=float, default=0.98)
    p.add_argument("--rows_per_part", type=int, default=32)
    p.add_argument("--regroup_unit", default="channel", choices=["weight", "channel"],
                   help="channel: layers also try the tile variant")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--precision", default="bf16", choices=["fp32", "tf32", "fp16", "bf16"])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--configs", nargs="+", default=None, metavar="BLOCK_M,WARPS,STAGES[,VARIANT]",
                   help="configurations to try, VARIANT gather (default) or tile (default: the tuner's, per layer)")
    p.add_argument("--once", action="store_true", help="run each configuration once, untimed (for ncu)")
    return p


def parse_configs(texts):
    """["BLOCK_M,WARPS,STAGES[,VARIANT]", ...] -> the kernel's config dicts."""
    configs = []
    for text in texts:
        fields = text.split(",")
        try:
            numbers = tuple(int(v) for v in fields[:3])
        except ValueError:
            numbers = ()
        if len(numbers) != 3 or len(fields) > 4 or (len(fields) == 4 and fields[3] not in triton_conv.VARIANTS):
            raise InvalidInput(f"--configs takes BLOCK_M,WARPS,STAGES[,VARIANT] with VARIANT one of "
                               f"{', '.join(triton_conv.VARIANTS)}, got '{text}'")
        configs.append(triton_conv._config(*numbers, *fields[3:]))
    return configs


@torch.no_grad()
def main(args):
    if not torch.cuda.is_available():
        raise InvalidInput("kernel_sweep.py times the Triton kernel on a CUDA GPU, and PyTorch sees none")
    configs = parse_configs(args.configs) if args.configs else None
    dtype = apply_precision(args.precision)
    print(precision_line(args.precision))
    masked, regrouped_mask, infos, shapes = resnet18_tickets(args.sparsity, args.rows_per_part, args.regroup_unit,
                                                             args.batch_size)
    modules = dict(masked.named_modules())
    for name in args.layers:
        if name not in infos or infos[name].kept_mask:
            raise InvalidInput(f"'{name}' is not a regrouped layer of this ticket; valid: "
                            f"{', '.join(n for n, i in infos.items() if not i.kept_mask)}")
        conv, info = modules[name], infos[name]
        weight = (conv.weight_orig.detach() * regrouped_mask[name]).cuda()
        inputs = rotating_inputs(shapes[name], dtype, "cuda")
        layer = RegroupedConv2d(weight, info.blocks, args.regroup_unit, conv.stride, conv.padding).to(dtype)
        reference = F.conv2d(inputs[0].double(), weight.double(), None, conv.stride, conv.padding)
        dense = weight.to(dtype).contiguous(memory_format=torch.channels_last)
        calls = {"cudnn": (lambda x: F.conv2d(x, dense, None, conv.stride, conv.padding), inputs)}
        structure = layer.triton_state(inputs[0].device, dtype)[0]
        variants = triton_conv.variants_for(structure, layer.stride, inputs[0].shape[-2:])
        for config in configs or triton_conv.candidates(variants):
            if config["variant"] not in variants:
                print(f"  {name}: skipping {config}: "
                      f"{triton_conv.tile_variant_reason(structure, layer.stride, inputs[0].shape[-2:])}")
                continue
            candidate = tuple(config.values())

            def run(x, config=config):
                return layer._forward_triton(x, config=config)
            error = relative_error(run(inputs[0]), reference)
            if not error < TOLERANCE[args.precision]:
                raise InvalidInput(f"{name} with {config}: relative error {error:.2e}")
            calls[str(candidate)] = (run, inputs)
        chunks = triton_conv.chunks(structure, triton_conv.chunk_size(dtype))
        print(f"{name}: input {shapes[name]}, density {info.density_after:.3f}, {len(info.blocks)} blocks, "
              f"BLOCK_N {structure['tile']}, {chunks['tasks'].shape[0]} tasks, {len(chunks['chunk_tap'])} chunks "
              f"of {chunks['block_k']}")
        if args.once:
            for fn, xs in calls.values():
                fn(xs[0])
            torch.cuda.synchronize()
            continue
        times = graph_timings(calls, args.repeats)
        for label, t in times.items():
            print(f"  {label:<16} {1e3 * t['median']:.4f} ms [{1e3 * t['p10']:.4f}-{1e3 * t['p90']:.4f}] "
                  f"{t['median'] / times['cudnn']['median']:.2f} of cuDNN")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
