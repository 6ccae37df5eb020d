"""Draw one layer's mask as the paper does: rows (output channels) x columns
(input channel x tap), unstructured, after refill, and after regroup with the
rows reordered so each block is one contiguous band (block rows first, in
block order; rows outside every block last).

    python experiments/mask_pictures.py runs/imp/5checkpoint.pth.tar --layer layer3.0.conv2 --b2 4 --out runs/masks.png
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pruner.mask import Mask  # noqa: E402
from pruner.refill import kept_channels  # noqa: E402
from app.config import RegroupConfig  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint with masks")
    add_trust_flag(p)
    p.add_argument("--layer", default=None, help="layer name (default: the masked layer with the most rows)")
    p.add_argument("--fillback_rate", type=float, default=0.0)
    RegroupConfig.add_args(p)
    p.add_argument("--out", default="mask_pictures.png")
    return p


def refill_by_remaining(mask, rate):
    """Refill with the `remain` criterion: a mask alone has no weights to score."""
    rows = mask.flatten(1)
    k = kept_channels(mask, rate)
    keep = torch.sort(rows.sum(1), descending=True, stable=True).indices[:k]
    out = torch.zeros_like(rows)
    out[keep] = 1
    return out.view_as(mask)


def block_order(blocks, n_rows):
    """Row order that makes every block a contiguous band."""
    seen, order = set(), []
    for rows, _ in blocks:
        for r in rows.tolist():
            if r not in seen:
                seen.add(r)
                order.append(r)
    return order + [r for r in range(n_rows) if r not in seen]


def main(args):
    mask = Mask.load(args.checkpoint, args.trust_checkpoint)
    name = args.layer or max(mask, key=lambda n: mask[n].shape[0])
    if name not in mask:
        raise InvalidInput(f"no masked layer '{name}' in '{args.checkpoint}'; masked layers: {', '.join(mask)}")
    layer = mask[name]
    refilled = refill_by_remaining(layer, args.fillback_rate)
    regrouped, info = RegroupConfig.from_args(args, seed=0).regroup_layer(layer)
    order = block_order(info.blocks, layer.shape[0])
    panels = [("unstructured (IMP)", layer.flatten(1)),
              (f"refill: {kept_channels(layer, args.fillback_rate)}/{layer.shape[0]} channels", refilled.flatten(1)),
              ("regroup, rows by block" + (" (no block: mask kept)" if info.kept_mask else f": {len(info.blocks)} blocks"),
               regrouped.flatten(1)[order])]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, (title, m) in zip(axes, panels):
        ax.imshow(m.numpy().astype(np.float32), cmap="Greys", aspect="auto", interpolation="nearest")
        ax.set_title(f"{title}\ndensity {100 * float(m.mean()):.1f}%", fontsize=10)
        ax.set_xlabel("column (input channel x tap)")
    axes[0].set_ylabel("row (output channel)")
    fig.suptitle(f"{name} {tuple(layer.shape)} from {os.path.basename(args.checkpoint)}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"{args.out}: {name}, density {100 * float(layer.mean()):.1f}% -> refill "
          f"{100 * float(refilled.mean()):.1f}%, regroup {100 * info.density_after:.1f}% "
          f"({len(info.blocks)} blocks, {100 * info.nonzeros_kept:.1f}% of nonzeros kept)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
