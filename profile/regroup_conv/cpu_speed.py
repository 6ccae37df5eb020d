"""Benchmark: regrouped ResNet-18 layers on the CPU against the dense
convolution, per layer and end to end, beside the FLOPs ratios.

    python profile/regroup_conv/cpu_speed.py --sparsity 0.93 0.96 --batch_size 64

For each weight sparsity, one global magnitude step on the initial weights
makes an unstructured ticket; `--regroup_unit channel` regroups it (blocks of
output x input channels, computed as dense convolutions over gathered
channels). Per layer and for the whole network, dense and regrouped run
alternately after warm-up (median); outputs are checked against the masked
reference. Sparsities are chosen so the regrouped masks keep about 30% and
20% of the weights (printed as "kept").
"""
import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model  # noqa: E402
from models.regrouped import RegroupedConv2d, regroup_model  # noqa: E402
from pruner.magnitude import global_magnitude_prune  # noqa: E402
from pruner.masking import apply_mask, refresh_masked_weights  # noqa: E402
from pruner.regroup import regroup_mask  # noqa: E402
from utils.flops import masked_flops, model_flops  # noqa: E402
from utils.layer_bench import alternating_medians  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.93, 0.96])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--cn", type=int, default=8)
    p.add_argument("--b2", type=int, default=16)
    p.add_argument("--t1", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--memory_format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="tensor layout for dense and regrouped alike (oneDNN is fastest with channels_last)")
    return p


CPU = torch.device("cpu")  # this benchmark measures the CPU path


@torch.no_grad()
def main(args):
    torch.manual_seed(0)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    dense = build_model(args.arch, 10, 3).eval().to(memory_format=fmt)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.rand(shape).contiguous(memory_format=fmt)
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0]))
             for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d)]
    dense(x)
    for h in hooks:
        h.remove()
    print(f"CPU, {torch.get_num_threads()} threads | torch {torch.__version__} | {args.arch}, input {shape}, "
          f"{args.memory_format}, unit channel, cn {args.cn} b2 {args.b2} t1 {args.t1} | medians of {args.repeats}, alternating")
    for sparsity in args.sparsity:
        masked = copy.deepcopy(dense)
        ticket = global_magnitude_prune(masked, sparsity)
        new_mask, infos = regroup_mask(ticket, args.t1, args.cn, 32, args.b2, 0, "greedy", "channel")
        apply_mask(masked, new_mask)
        refresh_masked_weights(masked)
        modules = dict(masked.named_modules())
        print(f"\nticket sparsity {100 * sparsity:.0f}% -> regrouped masks keep {100 * new_mask.density():.1f}% of the "
              f"weights ({sum(not i.kept_mask for i in infos.values())}/{len(infos)} layers with blocks)")
        print(f"  {'layer':<22} {'kept':>6} {'blocks':>6} {'dense ms':>9} {'regroup ms':>10} {'speedup':>8} {'FLOPs ratio':>11}")
        for name, info in infos.items():
            if info.kept_mask:
                continue
            conv = modules[name]
            weight = conv.weight.detach()
            layer = RegroupedConv2d(weight, info.blocks, "channel", conv.stride, conv.padding)
            xin = inputs[name]
            ref = F.conv2d(xin, weight, None, conv.stride, conv.padding)
            assert torch.allclose(layer(xin), ref, atol=1e-4, rtol=1e-4), name
            full = dense.get_submodule(name).weight
            t = alternating_medians({"dense": lambda: F.conv2d(xin, full, None, conv.stride, conv.padding),
                                     "regroup": lambda: layer(xin)}, CPU, args.repeats, warmup=1)
            print(f"  {name:<22} {100 * info.density_after:5.1f}% {len(info.blocks):6d} {1e3 * t['dense']:9.2f} "
                  f"{1e3 * t['regroup']:10.2f} {t['dense'] / t['regroup']:7.2f}x {1 / max(info.density_after, 1e-9):10.2f}x")
        one = (1,) + shape[1:]
        flops_ratio = model_flops(dense, one) / sum(r["m"] for r in masked_flops(dense, one, {"m": new_mask}).values())
        for tuned in (False, True):
            regrouped, choice = regroup_model(copy.deepcopy(masked), infos, "channel", x if tuned else None)
            diff = (regrouped(x) - masked(x)).abs().max().item()
            t = alternating_medians({"dense": lambda: dense(x), "regroup": lambda: regrouped(x)}, CPU, args.repeats, warmup=1)
            how = (f"timed per layer: {sum(c == 'regrouped' for c in choice.values())} regrouped, "
                   f"{sum(c == 'dense (faster)' for c in choice.values())} kept dense") if tuned else "every layer with blocks"
            print(f"  end to end ({how}): dense {1e3 * t['dense']:.1f} ms, regrouped {1e3 * t['regroup']:.1f} ms, "
                  f"speedup {t['dense'] / t['regroup']:.2f}x, FLOPs ratio {flops_ratio:.2f}x, max |diff| {diff:.1e}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
