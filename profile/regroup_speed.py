"""Benchmark: regroup every masked layer of a ticket, per-layer time,
blocks, density before/after and share of the original nonzeros kept; then
the default partitioner against Mt-KaHyPar on the same masks (connectivity
and nonzeros kept).

    python main_imp.py --arch res18 --epochs 2 --pruning_times 6 --save_dir runs/res18_imp
    python profile/regroup_speed.py runs/res18_imp/5checkpoint.pth.tar      # ResNet-18 at 67.2% sparsity

The original implementation needed about 200 s for ResNet-18 masks at 67%
sparsity on this machine class (measured when this project was set up, with a
working partitioner in place of its macOS-only binary); the ratio printed
uses that figure.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from pruner.mask import Mask  # noqa: E402
from pruner.partition import connectivity, partition_rows  # noqa: E402
from pruner.regroup import parts_for, report  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from utils.errors import run_cli  # noqa: E402

ORIGINAL_SECONDS = 200.0  # the original algorithm on ResNet-18 at 67% sparsity, this machine class


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint with masks (e.g. main_imp.py's {i}checkpoint.pth.tar)")
    add_trust_flag(p)
    RegroupConfig.add_args(p, skip=("partitioner",))  # both partitioners run
    p.add_argument("--seed", type=int, default=0, help="the partitioners' seed")
    p.add_argument("--skip_reference", action="store_true", help="do not run Mt-KaHyPar (it takes about a minute)")
    return p


def weighted_kept(mask, infos):
    return sum(info.nonzeros_kept * float(mask[n].count_nonzero()) for n, info in infos.items()) / mask.kept()


def main(args):
    mask = Mask.load(args.checkpoint, args.trust_checkpoint)
    torch.set_num_threads(2)
    print(f"{args.checkpoint}: {len(mask)} masked layers, sparsity {100 * mask.sparsity():.2f}% | "
          f"{os.cpu_count()} CPU cores | t1 {args.t1} cn {args.cn} nn {args.nn} b2 {args.b2} unit {args.regroup_unit}")
    regroup = RegroupConfig.from_args(args, partitioner="greedy")
    tic = time.perf_counter()
    new_mask, infos = regroup.regroup(mask)
    seconds = time.perf_counter() - tic
    print(report(infos))
    kept = weighted_kept(mask, infos)
    print(f"greedy: {seconds:.2f} s for all layers | density {100 * mask.density():.2f}% -> "
          f"{100 * new_mask.density():.2f}% | nonzeros kept {100 * kept:.2f}% | "
          f"{ORIGINAL_SECONDS / seconds:.0f}x faster than the original's ~{ORIGINAL_SECONDS:.0f} s")
    if args.skip_reference:
        return
    print("\npartitioners on the same masks (connectivity km1 of the row partition; lower is better):")
    print(f"  {'layer':<24} {'rows x cols':>12} {'greedy':>8} {'s':>6} {'mtkahypar':>9} {'s':>6} {'ratio':>7}")
    totals = {"greedy": 0, "mtkahypar": 0}
    for name, m in mask.items():
        grid = m.flatten(1).numpy() != 0
        grid = grid[grid.any(1)][:, grid.any(0)]
        row = {}
        for partitioner in totals:
            t = time.perf_counter()
            k = parts_for(grid.shape[0], args.cn, args.b2)
            parts = partition_rows(grid, k, 0.1, args.seed, partitioner)
            row[partitioner] = (connectivity(grid, parts, k), time.perf_counter() - t)
            totals[partitioner] += row[partitioner][0]
        ratio = row["greedy"][0] / max(1, row["mtkahypar"][0])
        print(f"  {name:<24} {str(grid.shape[0]) + 'x' + str(grid.shape[1]):>12} {row['greedy'][0]:>8} "
              f"{row['greedy'][1]:6.2f} {row['mtkahypar'][0]:>9} {row['mtkahypar'][1]:6.2f} {ratio:7.4f}")
    tic = time.perf_counter()
    _, ref_infos = regroup.replace(partitioner="mtkahypar").regroup(mask)
    ref_seconds = time.perf_counter() - tic
    ref_kept = weighted_kept(mask, ref_infos)
    print(f"total connectivity: greedy {totals['greedy']} vs mtkahypar {totals['mtkahypar']} "
          f"({100 * (totals['greedy'] / max(1, totals['mtkahypar']) - 1):+.2f}%)")
    print(f"nonzeros kept by regroup: greedy {100 * kept:.2f}% ({seconds:.2f} s) vs mtkahypar {100 * ref_kept:.2f}% "
          f"({ref_seconds:.2f} s)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
