"""Masks and global magnitude pruning: exact sparsity per round, stem and
classifier dense, pruned weights stay pruned, validation of foreign masks."""
import pytest
import torch

from models import build_model
from pruner.magnitude import global_magnitude_prune
from pruner.mask import Mask
from pruner.masking import apply_mask, current_mask, effective_weights, load_plain_weights, prunable_layers, strip_masks
from utils.errors import InvalidInput


def small_model():
    torch.manual_seed(0)
    return build_model("res20s", 10, 1, (0.3,), (0.2,))


def test_sparsity_follows_one_minus_point_eight_to_the_i():
    model = small_model()
    previous = current_mask(model)
    for i in range(1, 8):
        mask = global_magnitude_prune(model, 0.2)
        assert abs(mask.sparsity() - (1 - 0.8 ** i)) < 1e-3
        for name in mask:  # what was pruned stays pruned
            assert torch.all(mask[name] <= previous[name])
        apply_mask(model, mask)
        with torch.no_grad():  # new values everywhere: pruning must still respect the old mask
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        previous = mask
    assert "conv1" not in mask and not any(n.startswith("fc") for n in mask)
    assert model.conv1.weight.count_nonzero() == model.conv1.weight.numel()


def test_pruning_removes_the_smallest_magnitudes_globally():
    model = small_model()
    mask = global_magnitude_prune(model, 0.5)
    modules = dict(model.named_modules())
    kept = torch.cat([modules[n].weight.detach().abs()[mask[n] > 0] for n in mask])
    removed = torch.cat([modules[n].weight.detach().abs()[mask[n] == 0] for n in mask])
    assert removed.max() <= kept.min()


def test_equal_magnitudes_are_pruned_in_layer_then_index_order():
    """Ties break towards the earlier layer and lower index, as a stable sort
    of all weights would (the selection that replaced the sort keeps this)."""
    model = small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    names = prunable_layers(model)
    total = sum(model.get_submodule(n).weight.numel() for n in names)
    mask = global_magnitude_prune(model, 0.3)
    flat = torch.cat([mask[n].flatten() for n in names])
    pruned = int(round(0.3 * total))
    assert torch.equal(flat, torch.cat([torch.zeros(pruned), torch.ones(total - pruned)]))


def test_stem_pruned_only_with_conv1_flag():
    model = small_model()
    assert prunable_layers(model)[0] == "layer1.0.conv1"
    mask = global_magnitude_prune(model, 0.2, include_stem=True)
    assert "conv1" in mask


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_open_interval_rejected(rate):
    with pytest.raises(InvalidInput, match="rate"):
        global_magnitude_prune(small_model(), rate)


def test_rewind_restores_every_unpruned_weight_exactly():
    model = small_model()
    init = effective_weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0).add_(1.0)
    mask = global_magnitude_prune(model, 0.2)
    load_plain_weights(model, init)
    apply_mask(model, mask)
    modules = dict(model.named_modules())
    for name, m in mask.items():
        w = modules[name].weight
        assert torch.equal(w[m > 0], init[name + ".weight"][m > 0])
        assert torch.all(w[m == 0] == 0)


def test_mask_validation_rejects_foreign_layers_and_shapes():
    model = small_model()
    with pytest.raises(InvalidInput, match="not a convolution"):
        Mask({"layer9.conv1": torch.ones(3, 3, 3, 3)}).validate(model)
    with pytest.raises(InvalidInput, match="shape"):
        Mask({"layer1.0.conv1": torch.ones(16, 16, 1, 1)}).validate(model)
    with pytest.raises(InvalidInput, match="other than 0 and 1"):
        Mask({"layer1.0.conv1": torch.full((16, 16, 3, 3), 0.5)}).validate(model)


def test_mask_roundtrip_and_from_checkpoint(tmp_path):
    model = small_model()
    mask = global_magnitude_prune(model, 0.3)
    mask.save(tmp_path / "m.pt")
    loaded = Mask.load(str(tmp_path / "m.pt"))
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    apply_mask(model, mask)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ck.pth.tar")
    from_ckpt = Mask.load(str(tmp_path / "ck.pth.tar"))
    assert from_ckpt.keys() == mask.keys() and abs(from_ckpt.sparsity() - 0.3) < 1e-3


def test_strip_masks_keeps_outputs():
    model = small_model().eval()
    apply_mask(model, global_magnitude_prune(model, 0.5))
    x = torch.rand(4, 1, 8, 8)
    y = model(x)
    strip_masks(model)
    assert not any(k.endswith("_mask") for k in model.state_dict())
    assert torch.allclose(model(x), y)


def test_pruning_after_loading_a_checkpoint_uses_the_loaded_weights():
    """A resume at a state boundary prunes the loaded weights, not the ones
    the prune hook cached before loading."""
    from pruner.masking import load_weights

    trained = small_model()
    apply_mask(trained, global_magnitude_prune(trained, 0.2))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # an optimizer step: module.weight is now stale
    expected = global_magnitude_prune(trained, 0.2)
    resumed = build_model("res20s", 10, 1, (0.3,), (0.2,))  # other initial weights
    load_weights(resumed, trained.state_dict())
    got = global_magnitude_prune(resumed, 0.2)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
