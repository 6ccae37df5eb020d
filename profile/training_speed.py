"""Benchmark: one epoch of masked (IMP ticket) training against dense
training of the same model on the same data, measured side by side.

    python profile/masked_training.py --arch res18 --dataset digits --sparsity 0.8

Masks ride on torch.nn.utils.prune's reparametrisation (weight = orig*mask on
every forward); this prints what that costs per epoch. Runs alternate
(dense, masked, dense, ...) so machine noise hits both alike; the ratio is
of the medians.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from pruner.magnitude import global_magnitude_prune  # noqa: E402
from pruner.masking import apply_mask  # noqa: E402
from app.datasets import load_dataset, make_loader  # noqa: E402
from utils.runtime import select_device  # noqa: E402
from app.training import train_one_epoch  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="res18")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data", default="datasets")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of conv weights pruned in the masked model")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    p.add_argument("--gpu", type=int, default=None)
    return p


def main(args):
    device = select_device(args.gpu)
    data = load_dataset(args.dataset, args.data)
    spec = data.spec
    models = {}
    for variant in ("dense", "masked"):
        torch.manual_seed(0)
        model = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
        model = model.to(device)
        if variant == "masked":
            # One global magnitude step straight to the target sparsity.
            apply_mask(model, global_magnitude_prune(model, args.sparsity))
        models[variant] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4))
    times = {"dense": [], "masked": []}
    for r in range(args.repeats + 1):  # the first round warms up
        for variant, (model, opt) in models.items():
            loader = make_loader(data.train, args.batch_size, True, 0, seed=r)
            if device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            train_one_epoch(model, loader, opt, device, amp=False, desc=variant)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[variant].append(time.perf_counter() - tic)
    dense, masked = statistics.median(times["dense"]), statistics.median(times["masked"])
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} CPU threads | "
          f"{args.arch} on {args.dataset}, batch {args.batch_size}, {len(data.train)} images/epoch")
    print(f"dense  epoch: median {dense:.3f} s over {args.repeats} ({', '.join(f'{t:.3f}' for t in times['dense'])})")
    print(f"masked epoch: median {masked:.3f} s over {args.repeats} ({', '.join(f'{t:.3f}' for t in times['masked'])}), "
          f"{100 * args.sparsity:.0f}% of conv weights pruned")
    print(f"masked / dense = {masked / dense:.3f}x")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
