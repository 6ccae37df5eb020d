"""Regroup a lottery ticket into dense row x column blocks, then retrain.

Reads the ticket's mask from --mask_dir, regroups every masked convolution
(hypergraph partition of its rows into --cn parts, then the dense block of
each part; docs/design.md §5), resets the weights to the rewind point of
--pretrained and retrains. Prints and saves per layer: blocks, density
before/after, share of the original nonzeros kept, and the FLOPs report.
With --save_model, --export_onnx writes the retrained ticket as ONNX. The
work is app.retrain.retrain with a RegroupConfig; this script parses its flags.
"""
from app.config import RegroupConfig, RetrainConfig
from app.flags import parser_for
from app.exports import export_regrouped
from app.retrain import retrain
from utils.errors import run_cli


def get_args_parser():
    parser = RetrainConfig.add_args(parser_for(__doc__.splitlines()[0]), skip=("export_slim",), save_dir="runs/regroup")
    return RegroupConfig.add_args(parser)


def main(args):
    cfg = RetrainConfig.from_args(args)
    regroup = RegroupConfig.from_args(args)
    return retrain(cfg, regroup, (lambda c: export_regrouped(c, regroup)) if cfg.export_onnx else None)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
