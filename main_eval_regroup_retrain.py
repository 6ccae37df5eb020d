"""Regroup a lottery ticket into dense row x column blocks, then retrain.

Reads the ticket's mask from --mask_dir, regroups every masked convolution
(hypergraph partition of its rows into --cn parts, then the dense block of
each part; DESIGN.md §5), resets the weights to the rewind point of
--pretrained and retrains. Prints and saves per layer: blocks, density
before/after, share of the original nonzeros kept, and the FLOPs report.
"""
from pruner.regroup import check_regroup_args, regroup_mask, report
from utils.arguments import add_regroup_args, parser_for
from utils.errors import run_cli
from utils.retrain import add_retrain_args, retrain


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_retrain_args(parser, save_dir="runs/regroup")
    add_regroup_args(parser)
    return parser


def regroup_layers(model, mask, data, args):
    new_mask, infos = regroup_mask(mask, args.t1, args.cn, args.nn, args.b2, args.seed, args.partitioner,
                                   args.regroup_unit)
    print(report(infos))
    layers = {name: {"blocks": [[r.tolist(), c.tolist()] for r, c in info.blocks], "kept_mask": info.kept_mask,
                     "density_before": info.density_before, "density_after": info.density_after,
                     "nonzeros_kept": info.nonzeros_kept, "seconds": info.seconds}
              for name, info in infos.items()}
    return new_mask, layers


def main(args):
    if not args.evaluate:
        check_regroup_args(args.t1, args.cn, args.nn, args.b2, args.regroup_unit)
    return retrain(args, "regroup", regroup_layers)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
