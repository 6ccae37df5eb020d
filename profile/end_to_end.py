"""Whole-network inference of one ticket in its forms, side by side:
dense (the same weights, no masks), masked (the unstructured ticket),
slimmed refill (refilled by magnitude, channels cut out) and regrouped
(blocks computed by the regrouped convolution). Each structured form is
checked against the masked model it implements; FLOPs per image beside.

    python profile/end_to_end.py runs/res18_imp/5checkpoint.pth.tar --arch res18 --batch_size 64 --image_size 32
    python profile/end_to_end.py TICKET --batch_size 1 64 256 --dtype bf16 --cuda_graphs        # on a GPU

On a GPU (utils/structured_bench.end_to_end_gpu): dense vs regrouped vs
slimmed refill in --dtype (TF32 switches printed and applied to all),
channels-last, cudnn.benchmark on; the regrouped model keeps cuDNN for each
layer where --kernel is slower on that layer's input (CUDA-graph timing);
with --cuda_graphs every model is timed as CUDA-graph replays, else eagerly
(Python's launch overhead included); medians and p10-p90 of --repeats over
rotating inputs. On the CPU, in fp32: the channel unit as
kernels.permuted.permuted_model (BatchNorm folded, so it is also compared
with the dense model with BatchNorm folded), the weight unit through
RegroupedConv2d; each layer keeps its dense convolution where the block form
times slower on its input; alternating medians; FLOPs per image both as an
ideal sparse kernel would run them and as executed (group padding and dense
layers included), and the share of the dense FLOPs in layers with blocks.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from kernels.regrouped import regroup_model  # noqa: E402
from pruner.fold_bn import fold_batchnorm  # noqa: E402
from pruner.mask import Mask  # noqa: E402
from pruner.masking import load_weights, strip_masks  # noqa: E402
from kernels.permuted import permuted_model  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from utils.checkpoint import load_file, plain_weights, state_dict_of  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.flops import flops_share, masked_flops, model_flops  # noqa: E402
from bench.gpu import PRECISIONS, precision_line, versions, versions_line  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from utils.timing import alternating_medians  # noqa: E402
from utils.runtime import select_device  # noqa: E402
from bench.tickets import build_tickets, copied, end_to_end_gpu  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a ticket: checkpoint with masks (e.g. main_imp.py's {i}checkpoint.pth.tar)")
    p.add_argument("--arch", default=None, help="default: the checkpoint's")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's classifier")
    p.add_argument("--in_channels", type=int, default=None, help="default: from the checkpoint's stem")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, nargs="+", default=[64], help="one or several batch sizes")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default: 50 on a GPU, 10 on the CPU)")
    # The channel unit by default: its form runs fast without a GPU (kernels.permuted) and exports to ONNX.
    RegroupConfig.add_args(p, regroup_unit="channel")
    p.add_argument("--gpu", type=int, default=None)
    add_trust_flag(p)
    g = p.add_argument_group("GPU")
    g.add_argument("--kernel", default="triton", choices=["triton", "cuda"], help="the regrouped kernel on a GPU")
    g.add_argument("--dtype", default=None, choices=list(PRECISIONS),
                   help="precision of every model (default: tf32 on a GPU; fp32 on the CPU)")
    g.add_argument("--cuda_graphs", action="store_true", help="time every model as CUDA-graph replays")
    return p


def ticket_model(args):
    ckpt = load_file(args.checkpoint, "checkpoint", args.trust_checkpoint)
    state_dict = state_dict_of(ckpt, args.checkpoint)
    if not Mask.from_state_dict(state_dict):
        raise InvalidInput(f"'{args.checkpoint}' holds no masks: give a ticket (an IMP checkpoint)")
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    arch = args.arch or saved.get("arch")
    if arch is None:
        raise InvalidInput(f"'{args.checkpoint}' does not name its architecture: pass --arch")
    plain = plain_weights(state_dict)
    classifier = [v for k, v in plain.items() if k.endswith(("fc.weight", "classifier.weight"))]
    num_classes = args.num_classes or (classifier[0].shape[0] if classifier else 10)
    in_channels = args.in_channels or plain["normalize.mean"].numel()
    model = build_model(arch, num_classes, in_channels)
    load_weights(model, state_dict)
    return model.eval(), in_channels


@torch.no_grad()
def main(args):
    regroup = RegroupConfig.from_args(args, seed=0)
    if min(args.batch_size) < 1 or args.image_size < 1:
        raise InvalidInput(f"batch sizes and --image_size must be at least 1, got {args.batch_size} / {args.image_size}")
    device = select_device(args.gpu)
    masked, in_channels = ticket_model(args)
    mask = Mask.from_model(masked)
    tickets = build_tickets(masked, mask, regroup.regroup)
    infos = tickets["infos"]
    share = flops_share(tickets["dense"], (1, in_channels, args.image_size, args.image_size),
                        [name for name, info in infos.items() if not info.kept_mask])
    print(f"{args.checkpoint}: ticket sparsity {100 * mask.sparsity():.2f}% | refill "
          f"{100 * tickets['refilled_mask'].sparsity():.2f}% | regroup {100 * tickets['regrouped_mask'].sparsity():.2f}% "
          f"({sum(not i.kept_mask for i in infos.values())}/{len(infos)} layers with blocks, "
          f"{100 * share:.0f}% of the dense FLOPs)")
    if device.type == "cuda":
        return gpu_tables(args, tickets, in_channels, device)
    if args.dtype not in (None, "fp32"):
        raise InvalidInput(f"--dtype {args.dtype}: the CPU paths compute in fp32 (other precisions need a GPU)")
    print(environment_line(device))
    return {batch: cpu_table(args, tickets, mask, (batch, in_channels, args.image_size, args.image_size))
            for batch in args.batch_size}


def cpu_table(args, tickets, mask, shape):
    """Dense (also with BatchNorm folded), masked, slimmed refill and
    regrouped on the CPU at one input shape; {variant: seconds}. The channel
    unit runs as kernels.permuted.permuted_model (BN folded: timed against
    the dense model with BN folded), the weight unit as RegroupedConv2d
    layers; either way each layer keeps its dense convolution where the
    block form times slower on its input."""
    one = (1,) + shape[1:]
    x = torch.rand(shape)
    reference = tickets["regroup_reference"]
    if args.regroup_unit == "channel":
        regrouped, layers, _ = permuted_model(reference, args.cn, args.b2, example_input=x, repeats=args.repeats or 10)
        blocks = sum(row["form"] == "grouped" for row in layers.values())
    else:
        regrouped, choice = regroup_model(copied(reference), tickets["infos"], args.regroup_unit, x)
        strip_masks(regrouped)  # its layers without blocks run as plain convolutions on the zeroed weights
        blocks = sum(c == "regrouped" for c in choice.values())
    masked = tickets["masked"]
    dense_folded = fold_batchnorm(copied(tickets["dense"]).eval())[0]
    variants = {  # name: (model, model it must equal, FLOPs per image an ideal kernel runs; None: as executed)
        "dense": (tickets["dense"], None, None),
        "dense, BN folded": (dense_folded, tickets["dense"], None),
        "masked (unstructured)": (masked, None, _ideal(masked, one, mask)),
        "slimmed refill": (tickets["slimmed"], tickets["refilled"], None),
        f"regrouped ({args.regroup_unit})": (regrouped, reference, _ideal(masked, one, tickets["regrouped_mask"])),
    }
    print(f"input {shape} | {blocks} layers run as blocks")
    print(f"{'variant':<24} {'ms':>9} {'speedup':>8} {'ideal MFLOPs':>12} {'executed':>9} {'FLOPs ratio':>11} "
          f"{'max |diff|':>11}")
    diffs = {}
    for name, (model, ref, _) in variants.items():
        model.eval()
        diffs[name] = float("nan")
        if ref is not None:
            diffs[name] = (model(x) - ref.eval()(x)).abs().max().item()
            if diffs[name] > 1e-3:
                raise InvalidInput(f"{name} differs from the masked model it implements by {diffs[name]:.2e}")
    seconds = alternating_medians({name: functools.partial(model, x) for name, (model, _, _) in variants.items()},
                                  torch.device("cpu"), args.repeats or 10)
    executed = {name: model_flops(model, one) for name, (model, _, _) in variants.items()}  # caches warm: steady state
    dense_flops = executed["dense"]
    for name, (_, _, ideal) in variants.items():
        ideal = executed[name] if ideal is None else ideal
        print(f"{name:<24} {1e3 * seconds[name]:9.2f} {seconds['dense'] / seconds[name]:7.2f}x {ideal / 1e6:12.2f} "
              f"{executed[name] / 1e6:9.2f} {dense_flops / executed[name]:10.2f}x {diffs[name]:11.1e}")
    name = f"regrouped ({args.regroup_unit})"
    baseline = "dense, BN folded" if args.regroup_unit == "channel" else "dense"
    speedup, ratio = seconds[baseline] / seconds[name], dense_flops / executed[name]
    print(f"{name}: {speedup:.2f}x over {baseline}, executed FLOPs ratio {ratio:.2f}x ({speedup / ratio:.2f} of it)")
    return seconds


def gpu_tables(args, tickets, in_channels, device):
    """end_to_end_gpu per batch size; returns {batch: its result}."""
    precision = args.dtype or "tf32"
    print(versions_line(versions()))
    results = {}
    for batch in args.batch_size:
        shape = (batch, in_channels, args.image_size, args.image_size)
        row = end_to_end_gpu(tickets, shape, precision, args.regroup_unit, args.kernel, args.repeats or 50,
                             args.cuda_graphs, device)
        if batch == args.batch_size[0]:
            print(precision_line(precision) + f" | {'CUDA graphs' if args.cuda_graphs else 'eager'} | "
                  f"kernel {args.kernel}")
        layers = sum(c == "regrouped" for c in row["choice"].values())
        print(f"input {shape} | regrouped: {layers} layers on {args.kernel}, the others on cuDNN")
        print(f"  {'variant':<16} {'ms':>9} {'p10-p90':>17} {'speedup':>8} {'rel. error':>11}")
        for name, v in row["variants"].items():
            print(f"  {name:<16} {v['ms']:9.3f} {v['p10']:8.3f}-{v['p90']:<8.3f} {v['speedup']:7.2f}x {v['error']:11.1e}")
        results[batch] = row
    return results


def _ideal(model, shape, mask):
    table = masked_flops(model, shape, {"m": mask})
    return sum(row["m"] for row in table.values())


if __name__ == "__main__":
    run_cli(main, get_args_parser())
