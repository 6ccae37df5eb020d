"""Regroup a lottery ticket into dense row x column blocks, then retrain.

Reads the ticket's mask from --mask_dir, regroups every masked convolution
(hypergraph partition of its rows into --cn parts, then the dense block of
each part; DESIGN.md §5), resets the weights to the rewind point of
--pretrained and retrains. Prints and saves per layer: blocks, density
before/after, share of the original nonzeros kept, and the FLOPs report.
With --save_model, --export_onnx writes the retrained ticket as ONNX.
"""
import os

import torch

from kernels.grouped import grouped_model
from pruner.regroup import check_regroup_args, layer_summary, regroup_mask, report
from app.arguments import add_regroup_args, add_round_to, parser_for
from utils.errors import UserError, run_cli
from utils.flops import model_flops
from app.onnx_export import export_onnx
from app.retrain import add_export_args, add_retrain_args, check_export_args, exported_ticket, retrain


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_retrain_args(parser, save_dir="runs/regroup")
    add_round_to(add_regroup_args(parser))
    add_export_args(parser.add_argument_group("export"))
    return parser


def regroup_layers(model, mask, data, args):
    new_mask, infos = regroup_mask(mask, args.t1, args.cn, args.nn, args.b2, args.seed, args.partitioner,
                                   args.regroup_unit, args.round_to)
    print(report(infos))
    return new_mask, {name: layer_summary(info) for name, info in infos.items()}


def export_regrouped(args):
    """The retrained regrouped ticket as ONNX: channel-unit block layers as
    gathers and grouped convolutions, every other layer as its masked dense
    convolution."""
    model, images, saved = exported_ticket(args)
    how = saved if args.evaluate else {}  # --evaluate: how the checkpoint's run regrouped
    unit, parts, b2 = (how.get(key, getattr(args, key)) for key in ("regroup_unit", "cn", "b2"))
    exported, forms = grouped_model(model, unit, parts, b2)
    with torch.no_grad():
        diff = (exported(images) - model(images)).abs().max().item()
    if diff > 1e-4:
        raise UserError(f"the grouped model differs from the masked model by {diff:.2e}; not exported")
    grouped = sum(form.startswith("grouped") for form in forms.values())
    if unit == "weight":
        print("--regroup_unit weight: ONNX has no operator for weight-wise blocks, so every layer is exported as "
              "its masked dense convolution; this form does not exploit the sparsity (regroup with "
              "--regroup_unit channel for grouped convolutions)")
    elif grouped < len(forms):
        print(f"{len(forms) - grouped} of {len(forms)} pruned layers have no channel blocks and are exported as "
              "masked dense convolutions: " + ", ".join(name for name, form in forms.items() if not form.startswith("grouped")))
    error = export_onnx(exported, [images[:2], images, images[:1]], args.export_onnx)
    shape = (1, *images.shape[1:])
    print(f"regrouped ticket exported to {args.export_onnx} (ONNX, dynamic batch; checked by onnx.checker and in "
          f"ONNX Runtime): {grouped} of {len(forms)} pruned layers as grouped convolutions, "
          f"{model_flops(exported, shape) / 1e6:.2f} MFLOPs per image executed (dense {model_flops(model, shape) / 1e6:.2f}; "
          f"groups are padded to the largest block), max |ONNX Runtime - PyTorch| {error:.1e}")


def main(args):
    if not args.evaluate:
        check_regroup_args(args.t1, args.cn, args.nn, args.b2, args.regroup_unit, args.round_to)
    check_export_args(args, ("export_onnx",))
    result = retrain(args, "regroup", regroup_layers)
    if args.export_onnx and int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        export_regrouped(args)
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
