"""Regroup: turn an unstructured mask into dense row x column blocks.

For one layer's 2-D mask [c_out, c_in*kh*kw] (docs/design.md §5):
1. keep the rows and columns that hold any nonzero;
2. partition the rows into `cn` parts on the column hypergraph (pruner.partition);
   cn='auto' picks the parts per layer from its live rows (`parts_for`: one
   part per 2 x b2 rows; a layer of one part is one block whatever b2), so
   large and small layers alike get blocks;
3. in each part, order columns by their nonzero count inside the part
   (descending, ties by index) and take the first i columns for the smallest
   i at which every row r of the part has i > t1 * (r's nonzeros outside
   those i columns) — the i-th column *in sorted order* (the paper; the
   original code's natural-order walk was a slip);
   a part with more than `b2` rows becomes the block (its rows x those
   columns), its rows split into a multiple of `nn` and the remainder, as the
   kernel tiles rows by `nn`;
4. the new mask is the union of the blocks; a layer without any block keeps
   its mask (reported, never silent).

With unit="channel" a column is a whole input channel (all kh*kw taps), so
blocks are "these output channels x these input channels"; `round_to` N
then rounds each block's input channels up to a multiple of N (the next
columns in the part's count order, then the layer's empty channels, at most
all of them), as vendor kernels compute channels in blocks.

Everything is array code: per part, one cumulative sum finds i for all rows.
"""
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pruner.mask import Mask
from pruner.partition import partition_rows
from pruner.refill import check_round_to, round_up
from utils.errors import InvalidInput

UNITS = ("weight", "channel")
AUTO_PARTS = "auto"


def parse_parts(value):
    """--cn's value: a whole number, or 'auto'; anything else is returned as
    given for check_regroup_args to refuse in one line."""
    text = str(value).strip()
    if text.lower() == AUTO_PARTS:
        return AUTO_PARTS
    try:
        return int(text)
    except ValueError:
        return text


def parts_for(rows, cn, b2):
    """Parts of a layer's row partition: `cn`, or with cn='auto' one part per
    2 x b2 live rows, rounded (b2 taken as at least 8), so parts, balanced to
    within 10%, stay clear of the b2 threshold; a layer of fewer than 3 x b2
    live rows is one part, which find_blocks makes a block whatever b2. Never more
    parts than rows."""
    if cn == AUTO_PARTS:
        cn = max(1, int(rows / (2 * max(b2, 8)) + 0.5))
    return max(1, min(cn, rows))


@dataclass
class LayerRegroup:
    """What regrouping one layer produced; blocks index the 2-D mask."""
    blocks: list = field(default_factory=list)  # [(rows LongTensor, cols LongTensor)]
    parts: int = 0  # parts of the row partition (cn, or parts_for's choice for 'auto')
    kept_mask: bool = False  # True: no block was found, the mask is unchanged
    density_before: float = 0.0
    density_after: float = 0.0
    nonzeros_kept: float = 0.0  # share of the original nonzeros inside the blocks
    seconds: float = 0.0


def check_regroup_args(t1, cn, nn, b2, unit="weight", round_to=1):
    if not t1 > 0:
        raise InvalidInput(f"t1 must be positive, got {t1}")
    if cn != AUTO_PARTS and (not isinstance(cn, int) or isinstance(cn, bool) or cn < 1):
        raise InvalidInput(f"cn (parts per layer) must be a whole number >= 1 or '{AUTO_PARTS}', got '{cn}'")
    if nn < 1:
        raise InvalidInput(f"nn (row tile) must be at least 1, got {nn}")
    if b2 < 0:
        raise InvalidInput(f"b2 (minimum rows of a block) must be at least 0, got {b2}")
    if unit not in UNITS:
        raise InvalidInput(f"unknown regroup unit '{unit}'; valid: {', '.join(UNITS)}")
    check_round_to(round_to)
    if round_to > 1 and unit != "channel":
        raise InvalidInput(f"--round_to {round_to} rounds whole input channels: use it with --regroup_unit channel")


def _check_mask(mask):
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInput(f"regroup needs a 2-D mask [c_out, c_in*kh*kw], got {shape}")
    if not torch.all((mask == 0) | (mask == 1)):
        raise InvalidInput("regroup needs a binary mask (only 0 and 1)")


def part_columns(sub, t1, round_to=1):
    """Columns (indices into sub's columns) of one part's block: the smallest
    prefix of the columns sorted by count at which every row holds more than
    t1 times its nonzeros outside the prefix... as i > t1 * outside; its
    length rounded up to a multiple of `round_to` (at most all columns)."""
    counts = sub.sum(0)
    order = np.argsort(-counts, kind="stable")
    inside = np.cumsum(sub[:, order], axis=1)  # [rows, i]: nonzeros within the first i sorted columns
    outside = sub.sum(1, keepdims=True) - inside
    i = np.arange(1, sub.shape[1] + 1)
    first = int(np.argmax(i > t1 * outside.max(0)))  # always true once outside is all zero
    return order[: round_up(first + 1, round_to)]


def find_blocks(mask, t1=1.5, cn=8, nn=32, b2=16, seed=0, partitioner="greedy", round_to=1):
    """Blocks (row indices, column indices) of a 2-D 0/1 mask; with
    `round_to`, every block has a multiple of it columns (or all of them)."""
    _check_mask(mask)
    check_regroup_args(t1, cn, nn, b2)
    m = mask.detach().cpu().numpy() != 0
    row_ids, col_ids = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if len(row_ids) == 0:
        return []
    sub = m[row_ids][:, col_ids]
    k = parts_for(len(row_ids), cn, b2)
    parts = partition_rows(sub, k, 0.1, seed, partitioner)
    smallest = 1 if cn == AUTO_PARTS and k == 1 else b2 + 1  # 'auto': a layer of one part is its own block
    blocks = []
    for p in range(int(parts.max()) + 1):
        members = np.flatnonzero(parts == p)
        if len(members) < smallest:
            continue
        cols = col_ids[part_columns(sub[members].astype(np.int32), t1, round_to)]
        if len(cols) % round_to:  # fewer nonzero columns than the multiple: add empty ones, lowest index first
            spare = np.setdiff1d(np.arange(m.shape[1]), cols)
            cols = np.concatenate([cols, spare[: round_up(len(cols), round_to) - len(cols)]])
        cols = torch.from_numpy(np.sort(cols))
        rows = torch.from_numpy(row_ids[members])
        tiled = (len(rows) // nn) * nn
        for chunk in (rows[:tiled], rows[tiled:]):
            if len(chunk):
                blocks.append((chunk.long(), cols.long()))
    return blocks


def blocks_to_mask(blocks, shape, dtype=torch.float32):
    out = torch.zeros(shape, dtype=dtype)
    for rows, cols in blocks:
        out[rows.unsqueeze(1), cols.unsqueeze(0)] = 1
    return out


def regroup(mask, t1=1.5, cn=8, nn=32, b2=16, seed=0, partitioner="greedy"):
    """The regrouped 0/1 mask (same shape and dtype as `mask`); a mask with
    no block comes back unchanged."""
    blocks = find_blocks(mask, t1, cn, nn, b2, seed, partitioner)
    if not blocks:
        return mask.clone()
    return blocks_to_mask(blocks, mask.shape, mask.dtype).to(mask.device)


def regroup_layer(layer_mask, t1=1.5, cn=8, nn=32, b2=16, seed=0, partitioner="greedy", unit="weight",
                  round_to=1):
    """Regroup one conv mask [c_out, c_in, kh, kw]; returns (new mask, LayerRegroup)."""
    check_regroup_args(t1, cn, nn, b2, unit, round_to)
    tic = time.perf_counter()
    c_out, c_in, kh, kw = layer_mask.shape
    if unit == "channel":
        grid = (layer_mask.reshape(c_out, c_in, kh * kw).sum(2) > 0).to(layer_mask.dtype)
    else:
        grid = layer_mask.reshape(c_out, -1)
    blocks = find_blocks(grid, t1, cn, nn, b2, seed, partitioner, round_to)
    info = LayerRegroup(blocks=blocks, density_before=float(layer_mask.count_nonzero()) / layer_mask.numel(),
                        parts=parts_for(int((grid != 0).any(1).sum()), cn, b2))
    if not blocks:
        new = layer_mask.clone()
        info.kept_mask = True
    else:
        new_grid = blocks_to_mask(blocks, grid.shape, layer_mask.dtype)
        if unit == "channel":
            new = new_grid[:, :, None].expand(c_out, c_in, kh * kw).reshape(layer_mask.shape).clone()
        else:
            new = new_grid.reshape(layer_mask.shape)
    info.density_after = float(new.count_nonzero()) / new.numel()
    original = float(layer_mask.count_nonzero())
    info.nonzeros_kept = float((new * layer_mask).count_nonzero()) / original if original else 1.0
    info.seconds = time.perf_counter() - tic
    return new, info


def regroup_mask(mask, t1=1.5, cn=8, nn=32, b2=16, seed=0, partitioner="greedy", unit="weight", round_to=1):
    """Regroup every layer of a Mask; returns (new Mask, {layer: LayerRegroup})."""
    new_mask, infos = Mask(), {}
    for name, m in mask.items():
        new_mask[name], infos[name] = regroup_layer(m.cpu(), t1, cn, nn, b2, seed, partitioner, unit, round_to)
    return new_mask, infos


def layer_summary(info):
    """What summary.json records of one regrouped layer."""
    return {"parts": info.parts, "blocks": [[r.tolist(), c.tolist()] for r, c in info.blocks],
            "kept_mask": info.kept_mask, "density_before": info.density_before,
            "density_after": info.density_after, "nonzeros_kept": info.nonzeros_kept, "seconds": info.seconds}


def report(infos):
    """Per-layer lines: parts, blocks, density before/after, share of nonzeros kept, time."""
    width = max((len(n) for n in infos), default=5)
    lines = []
    for name, info in infos.items():
        what = "no block: mask kept" if info.kept_mask else f"{len(info.blocks):3d} blocks"
        lines.append(f"  {name:<{width}}  {info.parts:3d} parts  {what:<20} density {100 * info.density_before:6.2f}% -> "
                     f"{100 * info.density_after:6.2f}% | nonzeros kept {100 * info.nonzeros_kept:6.2f}% | "
                     f"{1e3 * info.seconds:7.1f} ms")
    return "\n".join(lines)
