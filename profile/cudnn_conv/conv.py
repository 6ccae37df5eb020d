"""Time one layer through the vendor convolution (cuDNN on a GPU, with
benchmark mode; oneDNN on the CPU): the baseline for regrouped kernels.

    python profile/cudnn_conv/conv.py --kernel_file runs/layers/layer3.0.conv2.pth.tar --batch_size 64

The weight is the layer's masked weight, computed densely (zeros included),
which is what a dense library does with an unstructured ticket.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.errors import run_cli  # noqa: E402
from bench.layer import add_shape_args, environment_line, load_layer  # noqa: E402
from utils.timing import median_seconds  # noqa: E402
from utils.runtime import select_device  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    return p


@torch.no_grad()
def main(args):
    weight, geo = load_layer(args)
    device = select_device(args.gpu)
    torch.backends.cudnn.benchmark = True
    w = weight.to(device)
    print(environment_line(device))
    seconds = {}
    for batch in geo["batches"]:
        x = torch.randn(batch, weight.shape[1], geo["height"], geo["width"], device=device)  # not all zeros
        seconds[batch] = median_seconds(lambda: F.conv2d(x, w, None, geo["stride"], geo["padding"]), device,
                                        args.repeats)
        print(f"{args.kernel_file}: weight {tuple(weight.shape)}, input {tuple(x.shape)}, stride {geo['stride']}, "
              f"padding {geo['padding']} | dense conv median {1e3 * seconds[batch]:.3f} ms over {args.repeats} runs")
    return seconds


if __name__ == "__main__":
    run_cli(main, get_args_parser())
