"""Property-based tests (hypothesis) of the invariants, over random shapes
and densities: refill keeps exactly k whole channels, the best-scoring ones;
regroup gives a binary union of blocks inside the rows and columns that held
nonzeros, the same for the same seed; a slimmed network computes what the
masked one does; a Mask survives saving and loading."""
import os
import tempfile

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from models.vgg import VGG  # noqa: E402
from pruner.mask import Mask  # noqa: E402
from pruner.masking import apply_mask  # noqa: E402
from pruner.refill import channel_scores, is_channel_wise, kept_channels, refill  # noqa: E402
from pruner.regroup import blocks_to_mask, find_blocks, regroup  # noqa: E402
from pruner.slim import slim  # noqa: E402
from bench.network import trained_looking  # noqa: E402

FEW = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", 25)), deadline=None, derandomize=True)
# 25 examples each in CI (each builds tensors, or a network), the same ones every run; PROPERTY_EXAMPLES=500 tries more


def random_mask(seed, shape, density):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).float()


@FEW
@given(seed=st.integers(0, 2**16), c_out=st.integers(1, 24), c_in=st.integers(1, 6), k=st.sampled_from([1, 3]),
       density=st.floats(0.02, 1.0), rate=st.floats(0.0, 1.0), round_to=st.sampled_from([1, 4, 8]),
       criterion=st.sampled_from(["magnitude", "remain"]))
def test_refill_keeps_exactly_k_whole_best_channels(seed, c_out, c_in, k, density, rate, round_to, criterion):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, k))
    mask = Mask({"0": random_mask(seed, (c_out, c_in, k, k), density)})
    apply_mask(model, mask)
    new = refill(model, mask, criterion, rate, round_to=round_to)["0"]
    rows = new.flatten(1).amax(1) > 0
    assert is_channel_wise(new) and torch.all((new == 0) | (new == 1))
    assert int(rows.sum()) == kept_channels(mask["0"], rate, round_to)
    scores = channel_scores(model, mask, criterion)["0"]
    if not rows.all():
        assert scores[rows].min() >= scores[~rows].max()


@FEW
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.0, 0.6),
       cn=st.one_of(st.integers(1, 6), st.just("auto")), b2=st.integers(0, 6), t1=st.floats(0.2, 3.0),
       nn_tile=st.integers(1, 16))
def test_regroup_is_a_binary_union_of_blocks_where_nonzeros_were(seed, rows, cols, density, cn, b2, t1, nn_tile):
    mask = random_mask(seed, (rows, cols), density)
    out = regroup(mask, t1, cn, nn_tile, b2, seed=seed)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert torch.all((out == 0) | (out == 1))
    blocks = find_blocks(mask, t1, cn, nn_tile, b2, seed=seed)
    if not blocks:
        assert torch.equal(out, mask)  # no block: the mask is kept
        return
    assert torch.equal(out, blocks_to_mask(blocks, mask.shape))
    live_rows, live_cols = mask.any(1), mask.any(0)
    assert not out[~live_rows].any() and not out[:, ~live_cols].any()
    covered = torch.cat([r for r, _ in blocks])
    assert len(covered) == len(set(covered.tolist()))  # a row lies in at most one block
    part_rows = {}  # a part's rows are split by nn_tile, its blocks share its columns
    for r, c in blocks:
        part_rows[tuple(c.tolist())] = part_rows.get(tuple(c.tolist()), 0) + len(r)
    assert all(n > b2 for n in part_rows.values()) or cn == "auto"  # 'auto' with one part: a block whatever b2
    assert torch.equal(regroup(mask, t1, cn, nn_tile, b2, seed=seed), out)  # same seed, same mask


@FEW
@given(seed=st.integers(0, 2**16), widths=st.lists(st.integers(2, 12), min_size=2, max_size=4),
       pool_after=st.integers(0, 3), keep=st.floats(0.1, 1.0))
def test_slimmed_network_computes_what_the_masked_one_does(seed, widths, pool_after, keep):
    cfg = list(widths)
    cfg.insert(min(pool_after, len(cfg)), "M")
    torch.manual_seed(seed)
    model = VGG(cfg, 5, 2, (0.5, 0.5), (0.25, 0.25))
    g = torch.Generator().manual_seed(seed)
    mask = Mask()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            rows = (torch.rand(m.out_channels, generator=g) < keep).float()
            rows[torch.randint(m.out_channels, (1,), generator=g)] = 1  # at least one channel
            mask[name] = rows.view(-1, 1, 1, 1).expand_as(m.weight).clone()
    apply_mask(model, mask)
    trained_looking(model, seed)
    x = torch.rand(3, 2, 6, 6, generator=g)
    with torch.no_grad():
        assert (slim(model)(x) - model(x)).abs().max() < 1e-4


@FEW
@given(seed=st.integers(0, 2**16), shapes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8),
                                                           st.sampled_from([1, 3])), min_size=1, max_size=4),
       density=st.floats(0.0, 1.0))
def test_mask_save_load_round_trip(seed, shapes, density):
    mask = Mask({f"layer{i}.conv": random_mask(seed + i, (o, c, k, k), density) for i, (o, c, k) in enumerate(shapes)})
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "mask.pth.tar")
        mask.save(path)
        loaded = Mask.load(path)
    assert loaded.keys() == mask.keys()
    assert all(torch.equal(loaded[k], mask[k]) and loaded[k].dtype == torch.float32 for k in mask)
