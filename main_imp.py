"""Find lottery tickets: iterative magnitude pruning (IMP) with rewinding.

State 0 trains the dense model; after each state, `--rate` of the remaining
convolution weights are pruned by global magnitude, the weights are rewound
(lt: initial weights; rewind_lt: weights after --rewind_epoch epochs of
state 0; pt: --pretrained) and the next state trains the masked model.
--fillback refills and --regroup regroups each round's mask (IMP-Refill,
IMP-Regroup). The work is app.imp.run_imp; this script parses its flags.
"""
from app.config import ImpConfig
from app.flags import parser_for
from app.imp import run_imp
from utils.errors import run_cli


def get_args_parser():
    return ImpConfig.add_args(parser_for(__doc__.splitlines()[0]), save_dir="runs/imp")


def main(args):
    return run_imp(ImpConfig.from_args(args))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
