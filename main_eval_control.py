"""Retrain a lottery ticket's random control: random pruning or random reinitialisation.

The controls a ticket is judged against: --control random_pruning keeps
every masked layer's sparsity with the weights at random positions and
starts from the ticket's rewind point (--pretrained, as refill and regroup
do); --control random_reinit keeps the ticket's mask exactly and starts
from fresh random weights. Both are drawn from --seed. Retraining, flags,
checkpoints and summary.json are those of main_eval_fillback.py (the work
is app.retrain.retrain with a ControlConfig); a ticket that wins beats
both.
"""
from app.config import ControlConfig, RetrainConfig
from app.flags import parser_for
from app.retrain import retrain
from utils.errors import run_cli


def get_args_parser():
    parser = RetrainConfig.add_args(parser_for(__doc__.splitlines()[0]), skip=("export_slim", "export_onnx"),
                                    save_dir="runs/control")
    return ControlConfig.add_args(parser)


def main(args):
    return retrain(RetrainConfig.from_args(args), ControlConfig.from_args(args))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
