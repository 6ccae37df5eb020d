"""Benchmark: regroup every masked layer of a ticket, per-layer time,
blocks, density before/after and share of the original nonzeros kept; then
the default partitioner against Mt-KaHyPar on the same masks (connectivity
and nonzeros kept).

    python main_imp.py --arch res18 --epochs 2 --pruning_times 6 --save_dir runs/res18_imp
    python profile/regroup_speed.py runs/res18_imp/5checkpoint.pth.tar      # ResNet-18 at 67.2% sparsity

With --reference_layers N (default: all), the original authors' algorithm
(profile/regroup_reference.py: written from its description, scalar tensor
accesses as it ran, hMETIS replaced by our partitioner and timed apart) is
timed on the first N masked layers in the same run, and regroup's speed on
those layers is given against it; 0 skips it (it takes about a minute per
large ResNet-18 layer).
"""
import argparse
import importlib.util
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


def _load_reference():
    """profile/regroup_reference.py, loaded by path (profile/ is a folder of scripts, not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regroup_reference.py")
    spec = importlib.util.spec_from_file_location("regroup_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint with masks (e.g. main_imp.py's {i}checkpoint.pth.tar)")
    add_trust_flag(p)
    RegroupConfig.add_args(p, skip=("partitioner",))  # both partitioners run
    p.add_argument("--seed", type=int, default=0, help="the partitioners' seed")
    p.add_argument("--skip_reference", action="store_true", help="do not run Mt-KaHyPar (it takes about a minute)")
    p.add_argument("--reference_layers", type=int, default=None, metavar="N",
                   help="time the original algorithm (profile/regroup_reference.py) on the first N masked layers "
                        "(default: all; 0: skip it)")
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
          f"{100 * new_mask.density():.2f}% | nonzeros kept {100 * kept:.2f}%")
    result = {"seconds": seconds, "kept": kept, "reference": time_reference(mask, infos, args)}
    if args.skip_reference:
        return result
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
    return result


def time_reference(mask, infos, args):
    """Time the original algorithm on the first --reference_layers layers, each
    separately, and regroup's time on the same layers (from this run) against
    it; prints and returns the numbers (None when skipped)."""
    names = list(mask)[: len(mask) if args.reference_layers is None else max(0, args.reference_layers)]
    if not names:
        return None
    reference = _load_reference()
    partition = reference.default_partition(args.seed, "greedy")
    print(f"\noriginal algorithm (timing reference, profile/regroup_reference.py: scalar tensor accesses, "
          f"our greedy partitioner for hMETIS) on the first {len(names)} of {len(mask)} masked layers:")
    print(f"  {'layer':<24} {'rows x cols':>12} {'loops s':>9} {'partition s':>11} {'total s':>9} {'blocks':>6}")
    layers = {}
    for name in names:
        m = mask[name]
        _, blocks, t = reference.reference_regroup(m, args.t1, args.nn, args.b2, args.cn, partition)
        layers[name] = {"loops": t["loops"], "partitioner": t["partitioner"], "blocks": len(blocks)}
        shape = f"{m.shape[0]}x{m[0].numel()}"
        print(f"  {name:<24} {shape:>12} {t['loops']:9.3f} {t['partitioner']:11.3f} "
              f"{t['loops'] + t['partitioner']:9.3f} {len(blocks):>6}")
    loops = sum(v["loops"] for v in layers.values())
    part = sum(v["partitioner"] for v in layers.values())
    total = loops + part
    ours = sum(infos[name].seconds for name in names)
    ratio = total / max(ours, 1e-9)
    print(f"reference total {total:.4g} s (loops {loops:.4g} s + partitioner {part:.4g} s) | regroup "
          f"(greedy, unit {args.regroup_unit}) {ours:.4g} s on the same {len(names)} layers | "
          f"{ratio:.1f}x faster, both measured in this run")
    return {"layers": layers, "loops": loops, "partitioner": part, "total": total, "regroup": ours, "ratio": ratio}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
