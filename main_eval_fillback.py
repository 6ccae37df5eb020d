"""Refill (or refill+) a lottery ticket into channel-wise structure, then retrain.

Reads the ticket's mask and trained weights from --mask_dir, keeps the k best
output channels of every masked convolution by --criterion (k from the
layer's density and --fillback-rate), resets the weights to the rewind point
of --pretrained and retrains. With --save_model the retrained ticket can be
exported physically slimmed: --export_slim (torch.export) and --export_onnx.
"""
import os

import torch

from pruner.refill import check_refill_args, criterion_names, format_refill_report, refill, refill_layers_report
from pruner.slim import slim
from app.arguments import add_round_to, parser_for
from utils.checkpoint import export_program
from utils.errors import UserError, run_cli
from utils.flops import model_flops
from app.onnx_export import export_onnx
from app.retrain import add_export_args, add_retrain_args, check_export_args, exported_ticket, retrain, training_batch


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_retrain_args(parser, save_dir="runs/refill")
    g = parser.add_argument_group("refill")
    g.add_argument("--criterion", default="magnitude", help=f"channel score, one of: {', '.join(criterion_names())}")
    g.add_argument("--fillback-rate", dest="fillback_rate", type=float, default=0.0,
                   help="0 = refill; > 0 = refill+ (share of the remaining channels added back)")
    add_round_to(g)
    add_export_args(parser.add_argument_group("export"), slim=True)
    return parser


def refill_layers(model, mask, data, args):
    batch = training_batch(data, args) if args.criterion in ("l1", "l2", "saliency") else None
    new_mask = refill(model, mask, args.criterion, args.fillback_rate, batch, args.round_to)
    layers = refill_layers_report(mask, new_mask, args.fillback_rate, args.round_to)
    print(format_refill_report(layers))
    return new_mask, layers


def slim_checked(model, images):
    """The slimmed ticket, after checking it gives the masked model's outputs."""
    slimmed = slim(model.eval())
    with torch.no_grad():
        diff = (slimmed(images) - model(images)).abs().max().item()
    if diff > 1e-4:
        raise UserError(f"slimmed model differs from the masked model by {diff:.2e}; not exported")
    return slimmed, diff


def size_line(model, slimmed, images):
    shape = (1, *images.shape[1:])
    dense_flops, slim_flops = model_flops(model, shape), model_flops(slimmed, shape)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in slimmed.parameters()))
    return (f"{params[1]:,} parameters (masked model {params[0]:,}), {slim_flops / 1e6:.2f} MFLOPs per image "
            f"({dense_flops / slim_flops:.2f}x fewer than dense)")


def export_slim(args, model, slimmed, images, diff):
    """Save the slimmed ticket as a torch.export program (.pt2, dynamic batch),
    checked after writing against the masked model."""
    def check(loaded):
        with torch.no_grad():
            for batch in (images, images[:1]):  # the batch dimension is dynamic: any size runs
                error = (loaded(batch) - model(batch)).abs().max().item()
                if not error < 1e-4:
                    raise UserError(f"the exported program differs from the masked model by {error:.2e}; not exported")
    export_program(slimmed, images[:2], args.export_slim, check)
    print(f"slimmed model exported to {args.export_slim} (torch.export, dynamic batch): "
          f"{size_line(model, slimmed, images)}, max |output difference| {diff:.1e}")


def export_onnx_file(args, model, slimmed, images):
    error = export_onnx(slimmed, [images[:2], images, images[:1]], args.export_onnx)
    print(f"slimmed model exported to {args.export_onnx} (ONNX, dynamic batch; checked by onnx.checker and in "
          f"ONNX Runtime): {size_line(model, slimmed, images)}, max |ONNX Runtime - PyTorch| {error:.1e}")


def main(args):
    if not args.evaluate:
        check_refill_args(args.criterion, args.fillback_rate, args.round_to)
    check_export_args(args, ("export_slim", "export_onnx"))
    result = retrain(args, "refill" if args.fillback_rate == 0 else "refill+", refill_layers)
    if (args.export_slim or args.export_onnx) and int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        model, images, _ = exported_ticket(args)
        slimmed, diff = slim_checked(model, images)
        if args.export_slim:
            export_slim(args, model, slimmed, images, diff)
        if args.export_onnx:
            export_onnx_file(args, model, slimmed, images)
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
