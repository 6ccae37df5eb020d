"""Refill (or refill+) a lottery ticket into channel-wise structure, then retrain.

Reads the ticket's mask and trained weights from --mask_dir, keeps the k best
output channels of every masked convolution by --criterion (k from the
layer's density and --fillback-rate, rounded up to a multiple of
--round_to), resets the weights to the rewind point of --pretrained and
retrains. With --save_model the retrained ticket can be exported physically
slimmed: --export_slim (torch.export) and --export_onnx. The work is
app.retrain.retrain with a RefillConfig; this script parses its flags.
"""
from app.config import RefillConfig, RetrainConfig
from app.flags import parser_for
from app.exports import export_refilled
from app.retrain import retrain
from utils.errors import run_cli


def get_args_parser():
    parser = RetrainConfig.add_args(parser_for(__doc__.splitlines()[0]), save_dir="runs/refill")
    return RefillConfig.add_args(parser)


def main(args):
    cfg = RetrainConfig.from_args(args)
    return retrain(cfg, RefillConfig.from_args(args), export_refilled if cfg.export_slim or cfg.export_onnx else None)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
