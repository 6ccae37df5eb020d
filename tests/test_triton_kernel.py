"""The Triton kernel of the regrouped convolution, run by Triton's CPU
interpreter (TRITON_INTERPRET=1), against F.conv2d in float64: both units
and both variants (gather; tile for channel-unit layers), 1x1 and 3x3, strides, padding, dilation, odd batches and channel counts,
rows outside every block, fp32 and fp16 (the interpreter's bf16 dot is wrong
and it ignores TF32: those are checked by profile/gpu_check.py on a GPU).
Every output element must be written: the output buffer starts as NaN.
conftest.py sets TRITON_INTERPRET=1 before triton is imported."""
import pytest
import torch
import torch.nn.functional as F

from kernels import triton_conv
from kernels.regrouped import RegroupedConv2d, regroup_model
from bench.gpu import relative_error
from bench.tickets import random_regrouped_layer

triton = pytest.importorskip("triton", reason="triton has wheels for Linux x86-64 only")

CASES = [  # (c_out, c_in, k, stride, padding, dilation, batch, size)
    (40, 24, 3, 1, 1, 1, 3, 6),
    (36, 21, 3, 2, 1, 1, 2, 7),  # odd input channels: the last channel pair repeats its channel
    (33, 20, 1, 1, 0, 1, 3, 5),
    (30, 16, 1, 2, 0, 1, 1, 6),
    (24, 12, 3, 1, 2, 2, 1, 7),
    (20, 10, 3, 1, 0, 1, 3, 6),
]
LIMIT = {torch.float32: 1e-5, torch.float16: 3e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("unit", ["weight", "channel"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}" for c in CASES])
def test_kernel_matches_conv2d_and_writes_every_output(case, unit, dtype):
    c_out, c_in, k, stride, padding, dilation, batch, size = case
    generator = torch.Generator().manual_seed(10 * CASES.index(case) + ["weight", "channel"].index(unit))
    weight, blocks, bias = random_regrouped_layer(c_out, c_in, k, unit, generator)
    covered = torch.cat([rows for rows, _ in blocks]).unique()
    assert len(covered) < c_out, "the case must have rows outside every block"
    conv = RegroupedConv2d(weight, blocks, unit, stride, padding, dilation, bias, kernel="triton").to(dtype)
    x = torch.randn(batch, c_in, size, size, generator=generator, dtype=torch.float64)
    reference = F.conv2d(x, weight.double(), bias.double(), stride, padding, dilation)
    out = torch.full(reference.shape, float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = conv._forward_triton(x.to(dtype), out=out)
    assert got.data_ptr() == out.data_ptr() and got.is_contiguous(memory_format=torch.channels_last)
    assert bool(torch.isfinite(got).all()), "an output element was not written"
    assert relative_error(got, reference) < LIMIT[dtype]


TILE_CASES = [c for c in CASES if c[7] % c[3] == 0] + [(28, 20, 3, 2, 1, 1, 3, 8)]  # + a 3x3 stride-2 layer


@pytest.mark.parametrize("case", TILE_CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}")
def test_both_variants_of_the_channel_unit_agree_with_conv2d(case):
    """Channel-unit layers whose input size is a multiple of the stride run
    the "tile" variant by default here; the "gather" variant (what the
    others run) must give the same."""
    c_out, c_in, k, stride, padding, dilation, batch, size = case
    generator = torch.Generator().manual_seed(100 + TILE_CASES.index(case))
    weight, blocks, bias = random_regrouped_layer(c_out, c_in, k, "channel", generator)
    conv = RegroupedConv2d(weight, blocks, "channel", stride, padding, dilation, bias, kernel="triton")
    x = torch.randn(batch, c_in, size, size, generator=generator)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, dilation)
    structure = conv.triton_state(x.device, x.dtype)[0]
    assert triton_conv.variants_for(structure, conv.stride, (size, size)) == ("gather", "tile")
    for variant in triton_conv.VARIANTS:
        out = torch.full(reference.shape, float("nan")).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            conv._forward_triton(x, out=out, config=dict(triton_conv.INTERPRETER_CONFIG, variant=variant))
        assert bool(torch.isfinite(out).all()), f"{variant}: an output element was not written"
        assert relative_error(out, reference) < LIMIT[torch.float32], variant


def test_tile_variant_boxes_and_where_it_applies(monkeypatch):
    assert triton_conv.pixel_box(32, 32, 128) == (1, 4, 32)  # whole rows of a CIFAR layer1 map
    assert triton_conv.pixel_box(8, 8, 128) == (2, 8, 8)  # small maps: several images a box
    assert triton_conv.pixel_box(7, 5, 32) == (1, 4, 8)  # odd sizes: the box overhangs, stores are masked
    generator = torch.Generator().manual_seed(8)
    for unit, stride, size, works in (("channel", 1, 7, True), ("channel", 2, 6, True), ("channel", 2, 7, False),
                                      ("weight", 1, 6, False)):
        weight, blocks, _ = random_regrouped_layer(20, 12, 3, unit, generator)
        conv = RegroupedConv2d(weight, blocks, unit, stride, 1, kernel="triton")
        x = torch.randn(1, 12, size, size, generator=generator)
        structure = conv.triton_state(x.device, x.dtype)[0]
        assert ("tile" in triton_conv.variants_for(structure, conv.stride, (size, size))) == works
        with monkeypatch.context() as switched:  # what gpu_check does when the variant fails on a GPU
            switched.setenv("STRUCTLTH_TRITON_TILE", "0")
            assert triton_conv.variants_for(structure, conv.stride) == ("gather",)
        if not works:
            with pytest.raises(ValueError, match="'tile' variant cannot compute this layer: .*(multiple of the stride"
                                                 "|channel unit)"):
                conv._forward_triton(x, config=dict(triton_conv.INTERPRETER_CONFIG, variant="tile"))
    # The GPU's default box on a 4x4 map: 8 images a box, 3 in the batch, so most of the box overhangs it.
    weight, blocks, bias = random_regrouped_layer(48, 40, 3, "channel", generator)
    conv = RegroupedConv2d(weight, blocks, "channel", 1, 1, 1, bias, kernel="triton")
    x = torch.randn(3, 40, 4, 4, generator=generator)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)
    out = torch.full(reference.shape, float("nan")).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv._forward_triton(x, out=out, config=triton_conv.default_config("tile"))
    assert bool(torch.isfinite(out).all()) and relative_error(out, reference) < LIMIT[torch.float32]


def test_gradients_match_autograd_through_conv2d():
    generator = torch.Generator().manual_seed(5)
    weight, blocks, bias = random_regrouped_layer(24, 10, 3, "weight", generator)
    conv = RegroupedConv2d(weight, blocks, "weight", 2, 1, 1, bias, kernel="triton")
    x = torch.randn(3, 10, 9, 9, generator=generator, requires_grad=True)
    target = torch.randn(3, 24, 5, 5, generator=generator)
    (conv(x) * target).sum().backward()
    dense = conv.dense_weight().detach().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, dense, b, 2, 1) * target).sum().backward()
    inside = conv.scatter_blocks([torch.ones_like(w) for w in conv.block_weights])
    assert relative_error(x.grad, x2.grad) < 1e-5
    assert relative_error(conv.bias.grad, b.grad) < 1e-5
    assert relative_error(conv.scatter_blocks([w.grad for w in conv.block_weights]), dense.grad * inside) < 1e-5


def test_packed_weights_follow_in_place_updates():
    generator = torch.Generator().manual_seed(6)
    weight, blocks, _ = random_regrouped_layer(20, 12, 3, "channel", generator)
    conv = RegroupedConv2d(weight, blocks, "channel", 1, 1, kernel="triton")
    x = torch.randn(2, 12, 5, 5, generator=generator)
    with torch.no_grad():
        conv(x)
        conv.block_weights[0].mul_(-3.0)  # an optimizer step, say: the cached packing must not be reused
        got = conv(x)
    assert relative_error(got, F.conv2d(x.double(), conv.dense_weight().double(), None, 1, 1)) < 1e-5


def test_a_regrouped_network_runs_through_the_kernel():
    from models import build_model
    from pruner.magnitude import global_magnitude_prune
    from pruner.masking import apply_mask, strip_masks
    from bench.network import copied
    from bench.tickets import regroup_by_rows
    torch.manual_seed(0)
    model = build_model("res20s", 10, 3).eval()
    mask = global_magnitude_prune(model, 0.8)
    regrouped_mask, infos = regroup_by_rows(mask, 8, "weight")
    apply_mask(model, regrouped_mask)
    regrouped, choice = regroup_model(copied(model), infos, "weight", kernel="triton")
    strip_masks(regrouped)
    assert sum(c == "regrouped" for c in choice.values()) == len(infos)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert relative_error(regrouped(x), model.double()(x.double())) < 1e-5


def test_kernel_choice_errors(monkeypatch):
    weight, blocks, _ = random_regrouped_layer(20, 8, 3, "weight", torch.Generator().manual_seed(7))
    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="unknown kernel 'cudnn'; valid: auto, triton, cuda, cpu"):
        RegroupedConv2d(weight, blocks, kernel="cudnn")
    with pytest.raises(RuntimeError, match="'cuda' kernel cannot run on a cpu tensor"):
        RegroupedConv2d(weight, blocks, kernel="cuda")(x)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        RegroupedConv2d(weight, blocks, kernel="triton").double()._forward_triton(x.double())
    auto = RegroupedConv2d(weight, blocks)
    assert auto.kernel_for(x) == "cpu"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        RegroupedConv2d(weight, blocks, kernel="triton")(x)


def test_tile_variant_compiles_to_bulk_copies_and_wgmma_for_hopper(tmp_path, cli_error):
    """No GPU needed: Triton compiles the tile variant for sm_90 here. Its
    loads must be bulk tensor copies and its products wgmma, without
    spills: the fast path on an H100/H200 is kept by every CI run."""
    import re
    from conftest import run_script
    from conftest import load_script
    proc = run_script("profile/regroup_conv/sm90_compile.py", "--variant", "tile", "--dtype", "bf16", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    ptx = {label: int(re.search(f"PTX: .*{label} (\\d+)", proc.stdout).group(1))
           for label in ("bulk tensor copies", "wgmma", "global loads")}
    assert ptx["bulk tensor copies"] > 0 and ptx["wgmma"] > 0 and ptx["global loads"] < 30, proc.stdout
    if "SASS:" in proc.stdout:  # Triton's cuobjdump is there
        assert "UTMALDG.5D" in proc.stdout and "HGMMA" in proc.stdout and " 0 bytes of stack" in proc.stdout, proc.stdout
    assert (tmp_path / "tile.ptx").exists() and (tmp_path / "tile.ttgir").exists()
    sm90 = load_script("profile/regroup_conv/sm90_compile.py")
    assert "--block_n must be 16, 32, 64 or 128" in cli_error(sm90, ["--block_n", "24"])
