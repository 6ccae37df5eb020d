"""The original regroup algorithm kept as a timing reference
(profile/regroup_reference.py): its blocks on a hand-made mask, as its
description says, and profile/regroup_speed.py timing it against regroup."""
import re

import numpy as np
import pytest
import torch

from conftest import load_script, run_script

# 60 rows x 8 columns; clusters A (rows 0-33), B (34-53) and C (54-59).
A, B, C = list(range(0, 34)), list(range(34, 54)), list(range(54, 60))


def _mask():
    m = torch.zeros(60, 8)
    m[A, 0:2] = 1  # A: columns 0, 1
    m[B, 4:6] = 1  # B: columns 4, 5
    m[C, 6:8] = 1  # C: columns 6, 7
    return m


def test_blocks_follow_the_description_with_its_slips():
    ref = load_script("profile/regroup_reference.py")
    seen = {}

    def partition(grid, k):  # deterministic, ids not in size order: C 0, B 1, A 2
        seen["grid"], seen["k"] = grid, k
        return np.array([2] * len(A) + [1] * len(B) + [0] * len(C))

    mask = _mask()
    new, blocks, seconds = ref.reference_regroup(mask, partition=partition)
    # Steps 1-3: the hypergraph file, read back, is the mask's non-empty columns (all but 2, 3); cn = 8 parts.
    assert seen["k"] == 8 and np.array_equal(seen["grid"], mask.numpy()[:, [0, 1, 4, 5, 6, 7]] != 0)
    # A (34 rows > nn = 32): two blocks, 32 rows and the remaining 2; columns: the first i = 4 in count order
    # (0, 1, then the empty 2, 3 by index: the search walks raw column i and stops at i = 4 > 1.5 x 2).
    # B (20 rows, 17..32): one block; its count order is 4, 5, 0, 1, ... and the raw-index walk stops at
    # i = 4, where column 4 leaves 1 nonzero per row: its block is columns 4, 5, 0, 1.
    # C (6 rows <= b2 = 16): no block, so its rows become zero.
    assert blocks == [(A[:32], [0, 1, 2, 3]), (A[32:], [0, 1, 2, 3]), (B, [4, 5, 0, 1])]
    expected = torch.zeros(60, 8)
    expected[A, 0:4] = 1
    expected[np.ix_(B, [0, 1, 4, 5])] = 1
    assert torch.equal(new, expected) and not new[C].any()
    assert set(seconds) == {"loops", "partitioner"} and all(v >= 0 for v in seconds.values())

    # A conv-shaped mask is viewed as [c_out, c_in*kh*kw]; the result keeps its shape.
    new4, blocks4, _ = ref.reference_regroup(mask.reshape(60, 2, 2, 2), partition=partition)
    assert blocks4 == blocks and torch.equal(new4, expected.reshape(60, 2, 2, 2))

    # Every cluster at most b2 rows: no block, the mask comes back as it was.
    small = torch.zeros(40, 8)
    small[:, :2] = 1
    same, none, _ = ref.reference_regroup(small, partition=lambda grid, k: np.arange(40) % 4)
    assert none == [] and torch.equal(same, small)


def test_default_partition_is_the_greedy_partitioner():
    ref = load_script("profile/regroup_reference.py")
    _, blocks, seconds = ref.reference_regroup(_mask(), b2=1)
    assert blocks and seconds["partitioner"] > 0


@pytest.fixture
def small_ticket(tmp_path):
    """A res20s checkpoint at 50% global magnitude sparsity (its masked state dict)."""
    from models import build_model
    from pruner.magnitude import global_magnitude_prune
    from pruner.masking import apply_mask
    torch.manual_seed(0)
    model = build_model("res20s", 10, 1, (0.3,), (0.2,))
    apply_mask(model, global_magnitude_prune(model, 0.5))
    path = tmp_path / "ticket.pth.tar"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_regroup_speed_times_the_reference_on_the_same_layers(small_ticket):
    proc = run_script("profile/regroup_speed.py", small_ticket, "--reference_layers", "2", "--skip_reference",
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "200 s" not in out and "original's ~" not in out
    assert "on the first 2 of" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\S+\s+\d+x\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+$", line)]
    assert len(rows) == 2
    line = next(line for line in out.splitlines() if line.startswith("reference total"))
    match = re.match(r"reference total ([\d.e+-]+) s \(loops ([\d.e+-]+) s \+ partitioner ([\d.e+-]+) s\) \| "
                     r"regroup \(greedy, unit weight\) ([\d.e+-]+) s on the same 2 layers \| ([\d.]+)x faster", line)
    assert match, line
    total, loops, part, ours, ratio = map(float, match.groups())
    assert total == pytest.approx(loops + part, rel=1e-3)
    assert total == pytest.approx(sum(float(r.split()[-2]) for r in rows), abs=2e-3)
    # measured, not a constant: the printed ratio (.1f, off by up to 0.05) against the ratio of the printed
    # times (4 significant digits each, off by up to 1e-3 of it together); both errors add up
    assert abs(ratio - total / ours) <= 0.05 + 1e-3 * total / ours + 1e-9

    skipped = run_script("profile/regroup_speed.py", small_ticket, "--reference_layers", "0", "--skip_reference",
                         timeout=120)
    assert skipped.returncode == 0, skipped.stderr
    assert "greedy:" in skipped.stdout and "original algorithm" not in skipped.stdout
    assert "reference total" not in skipped.stdout
