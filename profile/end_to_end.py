"""Whole-network inference of one ticket in four forms, side by side:
dense (the same weights, no masks), masked (the unstructured ticket),
slimmed refill (refilled by magnitude, channels cut out) and regrouped
(blocks computed by the regrouped convolution: the CUDA kernel on a GPU,
the CPU path otherwise). Each structured form is checked against the masked
model it implements; FLOPs per image are printed beside the times.

    python profile/end_to_end.py runs/res18_imp/5checkpoint.pth.tar --arch res18 --batch_size 64 --image_size 32
"""
import argparse
import copy
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from models.regrouped import regroup_model  # noqa: E402
from pruner.mask import Mask  # noqa: E402
from pruner.masking import apply_mask, load_plain_weights, load_weights, refresh_masked_weights, strip_masks  # noqa: E402
from pruner.refill import refill  # noqa: E402
from pruner.regroup import regroup_mask  # noqa: E402
from pruner.slim import slim  # noqa: E402
from utils.checkpoint import load_file, plain_weights, state_dict_of  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.flops import masked_flops, model_flops  # noqa: E402
from utils.layer_bench import alternating_medians, environment_line  # noqa: E402
from utils.runtime import select_device  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a ticket: checkpoint with masks (e.g. main_imp.py's {i}checkpoint.pth.tar)")
    p.add_argument("--arch", default=None, help="default: the checkpoint's")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's classifier")
    p.add_argument("--in_channels", type=int, default=None, help="default: from the checkpoint's stem")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--t1", type=float, default=1.5)
    p.add_argument("--cn", type=int, default=8)
    p.add_argument("--nn", type=int, default=32)
    p.add_argument("--b2", type=int, default=16)
    p.add_argument("--regroup_unit", default="channel", choices=["weight", "channel"])
    p.add_argument("--gpu", type=int, default=None)
    return p


def ticket_model(args):
    ckpt = load_file(args.checkpoint, "checkpoint")
    state_dict = state_dict_of(ckpt, args.checkpoint)
    if not Mask.from_state_dict(state_dict):
        raise UserError(f"'{args.checkpoint}' holds no masks: give a ticket (an IMP checkpoint)")
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    arch = args.arch or saved.get("arch")
    if arch is None:
        raise UserError(f"'{args.checkpoint}' does not name its architecture: pass --arch")
    plain = plain_weights(state_dict)
    classifier = [v for k, v in plain.items() if k.endswith(("fc.weight", "classifier.weight"))]
    num_classes = args.num_classes or (classifier[0].shape[0] if classifier else 10)
    in_channels = args.in_channels or plain["normalize.mean"].numel()
    model = build_model(arch, num_classes, in_channels)
    load_weights(model, state_dict)
    return model.eval(), in_channels


@torch.no_grad()
def main(args):
    device = select_device(args.gpu)
    masked, in_channels = ticket_model(args)
    mask = Mask.from_model(masked)
    shape = (args.batch_size, in_channels, args.image_size, args.image_size)
    one = (1,) + shape[1:]
    x = torch.rand(shape)

    dense = strip_masks(copied(masked))
    load_plain_weights(dense, {k.replace("_orig", ""): v for k, v in masked.state_dict().items() if not k.endswith("_mask")})

    refilled_mask = refill(masked, mask, "magnitude", 0.0)
    refilled = copied(masked)
    apply_mask(refilled, refilled_mask)
    slimmed = slim(refilled)

    regrouped_mask, infos = regroup_mask(mask, args.t1, args.cn, args.nn, args.b2, 0, "greedy", args.regroup_unit)
    regroup_reference = copied(masked)
    apply_mask(regroup_reference, regrouped_mask)
    # On the CPU each layer keeps its masked dense convolution where the block path times slower on its
    # input; on a GPU every layer with blocks runs the kernel (the per-layer table is conv.py's job).
    regrouped, choice = regroup_model(copied(regroup_reference), infos, args.regroup_unit,
                                      x if device.type == "cpu" else None)
    strip_masks(regrouped)  # its layers without blocks run as plain convolutions on the zeroed weights

    variants = {  # name: (model, model it must equal, FLOPs per image)
        "dense": (dense, None, model_flops(dense, one)),
        "masked (unstructured)": (masked, None, _ideal(masked, one, mask)),
        "slimmed refill": (slimmed, refilled, model_flops(slimmed, one)),
        f"regrouped ({args.regroup_unit})": (regrouped, regroup_reference, _ideal(masked, one, regrouped_mask)),
    }
    print(environment_line(device))
    print(f"{args.checkpoint}: input {shape} | ticket sparsity {100 * mask.sparsity():.2f}% | refill "
          f"{100 * refilled_mask.sparsity():.2f}% | regroup {100 * regrouped_mask.sparsity():.2f}% "
          f"({sum(not i.kept_mask for i in infos.values())}/{len(infos)} layers with blocks, "
          f"{sum(c == 'regrouped' for c in choice.values())} run as blocks)")
    print(f"{'variant':<24} {'ms':>9} {'speedup':>8} {'MFLOPs/img':>11} {'max |diff|':>11}")
    x = x.to(device)
    diffs = {}
    for name, (model, reference, _) in variants.items():
        model.to(device).eval()
        diffs[name] = float("nan")
        if reference is not None:
            diffs[name] = (model(x) - reference.to(device).eval()(x)).abs().max().item()
            if diffs[name] > 1e-3:
                raise UserError(f"{name} differs from the masked model it implements by {diffs[name]:.2e}")
    seconds = alternating_medians({name: functools.partial(model, x) for name, (model, _, _) in variants.items()},
                                  device, args.repeats)
    for name, (_, _, flops) in variants.items():
        print(f"{name:<24} {1e3 * seconds[name]:9.2f} {seconds['dense'] / seconds[name]:7.2f}x {flops / 1e6:11.2f} "
              f"{diffs[name]:11.1e}")


def copied(model):
    """A deep copy (prune's cached weights refreshed without autograd first)."""
    refresh_masked_weights(model)
    return copy.deepcopy(model)


def _ideal(model, shape, mask):
    table = masked_flops(model, shape, {"m": mask})
    return sum(row["m"] for row in table.values())


if __name__ == "__main__":
    run_cli(main, get_args_parser())
