"""Refill (or refill+) a lottery ticket into channel-wise structure, then retrain.

Reads the ticket's mask and trained weights from --mask_dir, keeps the k best
output channels of every masked convolution by --criterion (k from the
layer's density and --fillback-rate), resets the weights to the rewind point
of --pretrained and retrains.
"""
import os

import torch

from models import build_model
from pruner.masking import load_weights
from pruner.refill import check_refill_args, criterion_names, kept_channels, refill
from pruner.slim import slim
from utils.arguments import parser_for
from utils.checkpoint import export_program, load_file, state_dict_of
from utils.datasets import load_dataset, make_loader
from utils.errors import UserError, run_cli
from utils.flops import model_flops
from utils.retrain import add_retrain_args, retrain, training_batch


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_retrain_args(parser, save_dir="runs/refill")
    g = parser.add_argument_group("refill")
    g.add_argument("--criterion", default="magnitude", help=f"channel score, one of: {', '.join(criterion_names())}")
    g.add_argument("--fillback-rate", dest="fillback_rate", type=float, default=0.0,
                   help="0 = refill; > 0 = refill+ (share of the remaining channels added back)")
    g.add_argument("--export_slim", default=None, metavar="FILE",
                   help="also export the physically slimmed model (from the best checkpoint, or from --checkpoint "
                        "with --evaluate) to FILE (.pt2, torch.export, dynamic batch), after checking that the "
                        "saved program gives the masked model's outputs")
    return parser


def refill_layers(model, mask, data, args):
    batch = training_batch(data, args) if args.criterion in ("l1", "l2", "saliency") else None
    new_mask = refill(model, mask, args.criterion, args.fillback_rate, batch)
    layers = {}
    for name, m in mask.items():
        layers[name] = {"channels": m.shape[0], "kept_channels": kept_channels(m, args.fillback_rate),
                        "density_before": float(m.count_nonzero()) / m.numel(),
                        "density_after": float(new_mask[name].count_nonzero()) / m.numel()}
        info = layers[name]
        print(f"  {name:<24} {info['kept_channels']:>4}/{info['channels']:<4} channels | density "
              f"{100 * info['density_before']:6.2f}% -> {100 * info['density_after']:6.2f}%")
    return new_mask, layers


def export_slim(args):
    """Slim the refilled ticket and save it as a torch.export program (.pt2,
    dynamic batch), checked after writing against the masked model."""
    source = args.checkpoint if args.evaluate else os.path.join(args.save_dir, "model_SA_best.pth.tar")
    ckpt = load_file(source, "checkpoint to slim", args.trust_checkpoint)
    if "state_dict" not in ckpt:
        raise UserError(f"'{source}' holds no weights: retrain with --save_model to export a slimmed model")
    data = load_dataset(args.dataset, args.data)
    spec = data.spec
    model = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
    load_weights(model, state_dict_of(ckpt, source))
    slimmed = slim(model.eval())
    images = next(iter(make_loader(data.test, 64, False, 0)))[0]
    with torch.no_grad():
        diff = (slimmed(images) - model(images)).abs().max().item()
    if diff > 1e-4:
        raise UserError(f"slimmed model differs from the masked model by {diff:.2e}; not exported")
    shape = (1, spec.in_channels, spec.image_size, spec.image_size)
    dense_flops, slim_flops = model_flops(model, shape), model_flops(slimmed, shape)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in slimmed.parameters()))
    def check(loaded):
        with torch.no_grad():
            for batch in (images, images[:1]):  # the batch dimension is dynamic: any size runs
                error = (loaded(batch) - model(batch)).abs().max().item()
                if not error < 1e-4:
                    raise UserError(f"the exported program differs from the masked model by {error:.2e}; not exported")
    export_program(slimmed, images[:2], args.export_slim, check)
    print(f"slimmed model exported to {args.export_slim} (torch.export, dynamic batch): {params[1]:,} parameters (masked model {params[0]:,}), "
          f"{slim_flops / 1e6:.2f} MFLOPs per image ({dense_flops / slim_flops:.2f}x fewer than dense), "
          f"max |output difference| {diff:.1e}")


def main(args):
    if not args.evaluate:
        check_refill_args(args.criterion, args.fillback_rate)
    if args.export_slim and not (args.save_model or args.evaluate):
        raise UserError("--export_slim needs the retrained weights: add --save_model (or use --evaluate --checkpoint)")
    folder = os.path.dirname(os.path.abspath(args.export_slim or "."))
    if args.export_slim and folder != os.path.abspath(args.save_dir) and not os.access(folder, os.W_OK):
        # (--save_dir itself is made by the run, and checked for writing before training)
        raise UserError(f"--export_slim '{args.export_slim}': its folder does not exist or cannot be written")
    result = retrain(args, "refill" if args.fillback_rate == 0 else "refill+", refill_layers)
    if args.export_slim and int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        export_slim(args)
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
