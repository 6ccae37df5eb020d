"""Timing reference: the original authors' regroup algorithm, written here
from its description (not copied from their code), for timing only.

It runs as the original ran: one Python-level scalar tensor access per check
(`M[i, j] != 0`, one element at a time), which is what makes it slow. The one
part that cannot run as the original did is the partitioner: the original
called hMETIS (`shmetis <file> 8 10`, a closed macOS binary) on a hypergraph
file; here the same hypergraph file is written, read back and partitioned by
this repository's own partitioner (pruner.partition.partition_rows), and that
part is timed separately, so a report can tell the partitioner's time (ours)
from the original's Python loops. Its slips are kept (the search tests the raw
column index i, not the i-th column in count order; a row that stops the
search leaves the later rows' counts undecremented), as this is a timing
reference of what the original ran, not an algorithm to use.

Used only by profile/regroup_speed.py (and its test); no training or
evaluation path imports it. The algorithm we use is pruner/regroup.py.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pruner.partition import partition_rows  # noqa: E402
from pruner.regroup import parts_for  # noqa: E402


def write_hypergraph(M, rows, cols, path):
    """hMETIS hypergraph file: header '<hyperedges> <vertices>', then per
    non-empty column the 1-based indices (among `rows`) of its nonzero rows."""
    with open(path, "w") as f:
        f.write(f"{len(cols)} {len(rows)}\n")
        for j in cols:
            pins = []
            for k, i in enumerate(rows):
                if M[i, j] != 0:
                    pins.append(str(k + 1))
            f.write(" ".join(pins) + "\n")


def read_hypergraph(path):
    """The [vertices, hyperedges] 0/1 grid of a hypergraph file (the partitioner's input)."""
    with open(path) as f:
        edges, vertices = map(int, f.readline().split())
        grid = np.zeros((vertices, edges), dtype=bool)
        for e in range(edges):
            for pin in f.readline().split():
                grid[int(pin) - 1, e] = True
    return grid


def default_partition(seed=0, partitioner="greedy"):
    """hMETIS's stand-in: grid, k -> part id per row, by this repository's partitioner."""
    return lambda grid, k: partition_rows(grid, k, 0.1, seed, partitioner)


def reference_regroup(mask, t1=1.5, nn=32, b2=16, cn=8, partition=None):
    """The original algorithm on one layer's mask (viewed as [c_out, rest]).

    `partition(grid, k)` gives each non-empty row its part (default: the greedy
    partitioner). Returns (new mask shaped like `mask`, blocks as [(row list,
    column list)], {"loops": s, "partitioner": s}); with no block the mask
    itself comes back."""
    partition = partition or default_partition()
    tic = time.perf_counter()
    M = mask.reshape(mask.shape[0], -1)
    R, C = M.shape
    # 1. non-empty rows: scan each row to its first nonzero
    rows = []
    for i in range(R):
        for j in range(C):
            if M[i, j] != 0:
                rows.append(i)
                break
    # 2. non-empty columns: scan the non-empty rows of each column to its first nonzero
    cols = []
    for j in range(C):
        for i in rows:
            if M[i, j] != 0:
                cols.append(j)
                break
    # 3-4. hypergraph file, then the partition (hMETIS in the original; ours here, timed apart)
    handle, path = tempfile.mkstemp(suffix=".hgr")
    os.close(handle)
    try:
        write_hypergraph(M, rows, cols, path)
        part_tic = time.perf_counter()
        grid = read_hypergraph(path)
        parts = partition(grid, parts_for(len(rows), cn, b2)) if rows else []
        part_seconds = time.perf_counter() - part_tic
    finally:
        os.remove(path)
    # 5. clusters: rows by part id, largest first
    by_part = {}
    for k, i in enumerate(rows):
        by_part.setdefault(int(parts[k]), []).append(i)
    clusters = sorted(by_part.values(), key=len, reverse=True)
    # 6. per cluster: column counts, columns by count, row counts, then the search
    blocks = []
    for r in clusters:
        col_counts = [0] * C
        for c in range(C):
            for row in r:
                if M[row, c] != 0:
                    col_counts[c] += 1
        cc = sorted(range(C), key=lambda c: col_counts[c], reverse=True)
        nnz_rows = [0] * len(r)
        for j, row in enumerate(r):
            for c in range(C):
                if M[row, c] != 0:
                    nnz_rows[j] += 1
        for i in range(1, C):
            dense_cols = cc[:i]
            marked = False
            for j, row in enumerate(r):
                if M[row, i] != 0:  # the original's slip: column i, not cc[i - 1]
                    nnz_rows[j] -= 1
                if i <= t1 * nnz_rows[j]:
                    marked = True
                    break
            if marked:
                continue
            n = len(r)
            if n > nn:
                tiled = n // nn * nn
                blocks.append((r[:tiled], dense_cols))
                if n > tiled:
                    blocks.append((r[tiled:], dense_cols))
            elif n > b2:
                blocks.append((r, dense_cols))
            break
    # 7. the new mask, one scalar assignment per block cell
    if not blocks:
        new = mask
    else:
        new_2d = torch.zeros(R, C, dtype=mask.dtype)
        for block_rows, block_cols in blocks:
            for row in block_rows:
                for c in block_cols:
                    new_2d[row, c] = 1
        new = new_2d.reshape(mask.shape)
    total = time.perf_counter() - tic
    return new, blocks, {"loops": total - part_seconds, "partitioner": part_seconds}
