"""Refill (or refill+) a lottery ticket into channel-wise structure, then retrain.

Reads the ticket's mask and trained weights from --mask_dir, keeps the k best
output channels of every masked convolution by --criterion (k from the
layer's density and --fillback-rate), resets the weights to the rewind point
of --pretrained and retrains.
"""
from pruner.refill import check_refill_args, criterion_names, kept_channels, refill
from utils.arguments import parser_for
from utils.errors import run_cli
from utils.retrain import add_retrain_args, retrain, training_batch


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_retrain_args(parser, save_dir="runs/refill")
    g = parser.add_argument_group("refill")
    g.add_argument("--criterion", default="magnitude", help=f"channel score, one of: {', '.join(criterion_names())}")
    g.add_argument("--fillback-rate", dest="fillback_rate", type=float, default=0.0,
                   help="0 = refill; > 0 = refill+ (share of the remaining channels added back)")
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


def main(args):
    if not args.evaluate:
        check_refill_args(args.criterion, args.fillback_rate)
    return retrain(args, "refill" if args.fillback_rate == 0 else "refill+", refill_layers)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
