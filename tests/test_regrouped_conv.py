"""The regrouped convolution's CPU paths against F.conv2d on the masked
weight: strides, padding, dilation, 1x1 and 3x3, odd batch sizes, both units."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from kernels.regrouped import RegroupedConv2d, emulate_kernel
from pruner.regroup import regroup_layer

CASES = [  # (c_out, c_in, k, stride, padding, dilation, batch, size)
    (64, 32, 3, 1, 1, 1, 3, 9),
    (48, 24, 3, 2, 1, 1, 5, 11),
    (40, 16, 1, 1, 0, 1, 1, 7),
    (36, 20, 1, 2, 0, 1, 2, 8),
    (32, 16, 3, 1, 2, 2, 3, 10),
    (50, 30, 5, 1, 2, 1, 7, 6),
]


@pytest.mark.parametrize("unit", ["weight", "channel"])
@pytest.mark.parametrize("case", CASES)
def test_matches_conv2d_on_the_regrouped_weight(case, unit):
    c_out, c_in, k, stride, padding, dilation, batch, size = case
    g = torch.Generator().manual_seed(c_out * 31 + k)
    weight = torch.randn(c_out, c_in, k, k, generator=g)
    mask = (torch.rand(c_out, c_in, k, k, generator=g) > 0.7).float()
    new_mask, info = regroup_layer(mask, cn=4, nn=8, b2=2, unit=unit)
    assert info.blocks, "the case must produce blocks"
    bias = torch.randn(c_out, generator=g)
    conv = RegroupedConv2d(weight * new_mask, info.blocks, unit, stride, padding, dilation, bias)
    x = torch.randn(batch, c_in, size, size, generator=g)
    expected = F.conv2d(x, weight * new_mask, bias, stride, padding, dilation)
    got = conv(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()


def test_rejects_bad_weights():
    with pytest.raises(ValueError, match="4-D"):
        RegroupedConv2d(torch.ones(4, 4), [])
    with pytest.raises(ValueError, match="unit"):
        RegroupedConv2d(torch.ones(4, 4, 3, 3), [], unit="row")
    with pytest.raises(ValueError, match="outside the 0 block"):
        RegroupedConv2d(torch.ones(4, 4, 3, 3), [])  # a layer without blocks is not a regrouped convolution
    only_block = ([torch.tensor([0, 1]), torch.tensor([0, 1])],)
    with pytest.raises(ValueError, match="outside the 1 block"):
        RegroupedConv2d(torch.ones(4, 4, 1, 1), only_block, unit="channel")


def test_from_masked_conv_keeps_bias_and_geometry():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)
    mask = (torch.rand_like(conv.weight) > 0.6).float()
    new_mask, info = regroup_layer(mask, cn=4, nn=8, b2=2)
    prune.custom_from_mask(conv, "weight", new_mask)
    regrouped = RegroupedConv2d.from_conv(conv, info.blocks)
    x = torch.randn(3, 16, 9, 9)
    with torch.no_grad():
        assert torch.allclose(regrouped(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("unit", ["weight", "channel"])
@pytest.mark.parametrize("case", CASES[:4] + CASES[4:5])
def test_kernel_tables_reproduce_conv2d(case, unit):
    """The host-side tables, read with the CUDA kernel's index arithmetic."""
    c_out, c_in, k, stride, padding, dilation, batch, size = case
    g = torch.Generator().manual_seed(7 * c_out + k)
    weight = torch.randn(c_out, c_in, k, k, generator=g)
    mask = (torch.rand(c_out, c_in, k, k, generator=g) > 0.8).float()
    new_mask, info = regroup_layer(mask, cn=4, nn=8, b2=2, unit=unit)
    conv = RegroupedConv2d(weight * new_mask, info.blocks, unit, stride, padding, dilation)
    tables = conv.kernel_tables()
    assert all(v.dtype == torch.int32 for key, v in tables.items() if key != "w_all")
    assert len(tables["task_row"]) == sum(len(r) for r, _ in info.blocks)
    assert len(set(tables["task_row"].tolist())) == len(tables["task_row"])  # rows are disjoint: no atomics needed
    x = torch.randn(batch, c_in, size, size, generator=g)
    got = emulate_kernel(x, tables, c_out, conv.extents(), conv.stride, conv.padding)
    expected = F.conv2d(x, weight * new_mask, None, stride, padding, dilation)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()


@pytest.mark.slow
def test_cuda_kernel_compiles(tmp_path, monkeypatch):
    """nvcc builds the kernel from a cold cache (sm_90 only), about 25 s on 2 cores."""
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    from conftest import run_script
    env_cache = tmp_path / "cache"
    proc = run_script("profile/regroup_conv/conv.py", "--build-only",
                      env={"STRUCTLTH_CACHE": str(env_cache), "STRUCTLTH_CUDA_ARCHS": "90"})
    assert proc.returncode == 0, proc.stderr
    assert "built" in proc.stdout and "for sm_90 " in proc.stdout and any(env_cache.rglob("*.so"))
    assert "(operator torch.ops.regroup_conv_" in proc.stdout  # loaded, and its operator registered


def test_channel_path_reuses_its_buffer_safely_and_keeps_gradients():
    """Inference reuses one gather buffer (two calls, two inputs, both right);
    with autograd the path allocates afresh and gradients match F.conv2d's."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 24, 3, 3, generator=g)
    new_mask, info = regroup_layer((torch.rand(48, 24, 3, 3, generator=g) > 0.7).float(), cn=4, nn=8, b2=2,
                                   unit="channel")
    conv = RegroupedConv2d(weight * new_mask, info.blocks, "channel", 2, 1)
    a, b = torch.randn(5, 24, 11, 11, generator=g), torch.randn(5, 24, 11, 11, generator=g)
    with torch.no_grad():
        out_a, out_b = conv(a), conv(b)
    assert torch.allclose(out_a, F.conv2d(a, weight * new_mask, None, 2, 1), atol=1e-4)
    assert torch.allclose(out_b, F.conv2d(b, weight * new_mask, None, 2, 1), atol=1e-4)
    x = a.clone().requires_grad_()
    conv(x).square().sum().backward()
    y = a.clone().requires_grad_()
    F.conv2d(y, weight * new_mask, None, 2, 1).square().sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-3)
