"""Hypergraph partitioning of a mask's rows for regroup.

The hypergraph of a 2-D mask [rows, cols]: one vertex per row, one
hyperedge per column, whose pins are the rows that are nonzero in it. A
partition into k parts with at most floor((1 + eps) * ceil(rows / k)) rows
per part is scored by its connectivity (km1): over all columns, the number of
parts the column touches, minus one. Fewer means the parts share fewer
columns, so each part's dense block covers more of its own nonzeros.

Partitioners (registry `PARTITIONERS`):
- `mtkahypar`: Mt-KaHyPar (multilevel, the reference; seconds on large layers);
- `greedy` (default): a balanced start refined by Fiduccia-Mattheyses passes
  of exact single-row moves, gains kept up to date incrementally (numpy
  matrix-vector products on the columns whose counts cross 0 or 1; no
  per-pin Python loops).
"""
import functools
import math

import numpy as np

from utils.errors import InvalidInput


def max_part_size(rows, k, eps):
    return max(1, math.floor((1 + eps) * math.ceil(rows / k)))


def connectivity(mask, parts, k):
    """km1 of a partition (`parts[r]` in 0..k-1) of the rows of `mask`."""
    phi = mask.T.astype(np.float32) @ np.eye(k, dtype=np.float32)[parts]
    return int(np.clip((phi > 0).sum(1) - 1, 0, None).sum())


@functools.lru_cache(maxsize=None)
def _mtkahypar(threads):
    import mtkahypar
    return mtkahypar.initialize(threads, False)


def mtkahypar_partition(mask, k, eps=0.1, seed=0, threads=2):
    import mtkahypar
    init = _mtkahypar(threads)
    context = init.context_from_preset(mtkahypar.PresetType.DETERMINISTIC)  # same seed, same partition
    context.set_partitioning_parameters(k, eps, mtkahypar.Objective.KM1)
    context.logging = False
    mtkahypar.set_seed(int(seed))
    edges = [np.flatnonzero(col).tolist() for col in mask.T if col.sum() > 1]
    if not edges:  # no column joins two rows: every balanced split is optimal
        return np.arange(mask.shape[0]) % k
    try:
        hypergraph = init.create_hypergraph(context, mask.shape[0], len(edges), edges)
        partitioned = hypergraph.partition(context)
    except Exception as err:  # Mt-KaHyPar raises its own types; never fall back in silence
        raise RuntimeError(f"Mt-KaHyPar failed on a {mask.shape[0]}x{mask.shape[1]} mask: {err}") from err
    return np.array([partitioned.block_id(v) for v in range(mask.shape[0])], dtype=np.int64)


def greedy_partition(mask, k, eps=0.1, seed=0, max_passes=6):
    """Balanced start, then Fiduccia-Mattheyses passes: in each pass every row
    moves at most once, always the move with the best connectivity gain (also
    a negative one, to climb out of local minima); the pass is then rolled
    back to its best prefix. Stops when a pass finds nothing better."""
    rows = mask.shape[0]
    cap = max_part_size(rows, k, eps)
    A = mask.astype(np.float32)
    parts = _balanced_start(A, k, np.random.default_rng(seed))
    state = _MoveState(A, parts, k)
    patience = max(16, rows // 8)  # moves without a new best before a pass gives up
    for _ in range(max_passes):
        locked = np.zeros(rows, dtype=bool)
        history, total, best_total, best_len = [], 0.0, 0.0, 0
        while not locked.all() and len(history) - best_len < patience:
            gain = state.gains()
            gain[locked] = -np.inf
            gain[:, state.sizes >= cap] = -np.inf
            v, b = np.unravel_index(np.argmax(gain), gain.shape)
            if not np.isfinite(gain[v, b]):
                break
            history.append((v, state.parts[v]))
            total += gain[v, b]
            state.move(v, b)
            locked[v] = True
            if total > best_total:
                best_total, best_len = total, len(history)
        for v, a in reversed(history[best_len:]):  # roll back past the best prefix
            state.move(v, a)
        if best_total <= 0:
            break
    return state.parts


class _MoveState:
    """Partition with per-(column, part) pin counts and, per (row, part), the
    two sums that make a move's exact km1 gain:
      leave[v, p] = columns of v where p holds exactly one pin;
      enter[v, p] = columns of v that p does not touch.
    Moving v from a to b gains leave[v, a] - enter[v, b]."""

    def __init__(self, A, parts, k):
        self.A, self.parts = A, parts.copy()
        self.phi = A.T @ np.eye(k, dtype=np.float32)[parts]
        self.sizes = np.bincount(parts, minlength=k)
        self.leave = A @ (self.phi == 1)
        self.enter = A @ (self.phi == 0)
        self.rows = np.arange(A.shape[0])

    def gains(self):
        gain = self.leave[self.rows, self.parts][:, None] - self.enter
        gain[self.rows, self.parts] = -np.inf
        return gain

    def move(self, v, b):
        a = self.parts[v]
        if a == b:
            return
        cols = np.flatnonzero(self.A[v])
        for part, step in ((a, -1), (b, 1)):
            before = self.phi[cols, part]
            after = before + step
            self.phi[cols, part] = after
            # Only columns whose count crosses 0 or 1 change an indicator.
            d_one = (after == 1).astype(np.float32) - (before == 1)
            d_zero = (after == 0).astype(np.float32) - (before == 0)
            if d_one.any():
                nz = np.flatnonzero(d_one)
                self.leave[:, part] += self.A[:, cols[nz]] @ d_one[nz]
            if d_zero.any():
                nz = np.flatnonzero(d_zero)
                self.enter[:, part] += self.A[:, cols[nz]] @ d_zero[nz]
        self.parts[v] = b
        self.sizes[a] -= 1
        self.sizes[b] += 1


def _balanced_start(A, k, rng):
    """Rows ordered by their projection on the leading direction of the
    centred row-similarity, cut into k equal runs: similar rows start together."""
    rows = A.shape[0]
    if rows <= k:
        return np.arange(rows) % k
    centred = A - A.mean(0, keepdims=True)
    start = rng.standard_normal(A.shape[1]).astype(np.float32)
    direction = start
    for _ in range(20):  # power iteration on centred^T centred
        direction = centred.T @ (centred @ direction)
        direction /= np.linalg.norm(direction) + 1e-12
    order = np.argsort(centred @ direction, kind="stable")
    parts = np.empty(rows, dtype=np.int64)
    parts[order] = np.arange(rows) * k // rows
    return parts


PARTITIONERS = {"greedy": greedy_partition, "mtkahypar": mtkahypar_partition}


def partition_rows(mask, k, eps=0.1, seed=0, partitioner="greedy"):
    if partitioner not in PARTITIONERS:
        raise InvalidInput(f"unknown partitioner '{partitioner}'; valid: {', '.join(sorted(PARTITIONERS))}")
    if mask.shape[0] <= 1 or k == 1:
        return np.zeros(mask.shape[0], dtype=np.int64)
    return PARTITIONERS[partitioner](mask, k, eps, seed)
