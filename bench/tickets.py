"""Regrouped layers against the vendor library, checked before they are
timed (docs/design.md §7), and the layer tickets of the GPU scripts
(profile/regroup_conv/conv.py, kernel_sweep.py, gpu_check.py). Whole
networks are bench/network.py's.

Per layer: cuDNN (benchmark mode) on the regrouped weight computed densely,
against the Triton kernel and the CUDA C kernel, in one precision, on the
same rotating channels-last inputs (the CUDA C kernel reads NCHW fp32, its
only layout and dtype: it gets NCHW fp32 copies of the same inputs). On the
CPU (a rehearsal) the CPU's convolution and the host clock stand in.
"""
import torch
import torch.nn.functional as F

from kernels.regrouped import RegroupedConv2d
from pruner.mask import Mask
from pruner.regroup import regroup_layer
from bench.gpu import apply_precision, relative_error, rotating_inputs
from bench.network import generated_ticket
from utils.timing import timings

TOLERANCE = {"fp32": 1e-5, "tf32": 3e-3, "fp16": 3e-3, "bf16": 1.5e-2}  # relative error of one layer vs float64


def check_layer(conv, x, reference, precision, kernel):
    """Relative error of `conv` on x against the float64 reference, into a
    NaN-poisoned output buffer for the Triton kernel (every element written)."""
    if kernel == "triton":
        out = torch.full_like(reference, float("nan"), dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        got = conv._forward_triton(x, out=out)
    else:
        got = conv(x)
    error = relative_error(got, reference)
    tolerance = TOLERANCE["fp32" if kernel == "cuda" and x.dtype == torch.float32 else precision]
    return error, error < tolerance


@torch.no_grad()
def compare_layer(weight, blocks, unit, stride, padding, dilation, input_shape, precision, kernels=("triton", "cuda"),
                  repeats=50, cuda_graphs=True, device="cuda", seed=0):
    """One regrouped layer against cuDNN: {kernel: {ms, p10, p90, error, ok,
    speedup}} plus cudnn's, all in `precision`."""
    dtype = apply_precision(precision)
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = rotating_inputs(input_shape, dtype, device, generator=generator)
    dense_weight = weight.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    reference = F.conv2d(inputs[0].double(), weight.to(device).double(), None, stride, padding, dilation)
    calls = {"cudnn": (lambda x: F.conv2d(x, dense_weight, None, stride, padding, dilation), inputs)}
    row = {"precision": precision, "input": list(input_shape), "buffers": len(inputs)}
    for kernel in kernels:
        conv = RegroupedConv2d(weight.to(device), blocks, unit, stride, padding, dilation, kernel=kernel)
        if kernel == "cuda":  # fp32 NCHW only: copies of the same inputs in its layout and dtype; at 30-60x
            kernel_inputs = [x.float().contiguous() for x in inputs[:4]]  # cuDNN's time, 4 of them are plenty
        else:
            conv, kernel_inputs = conv.to(dtype), inputs
        error, ok = check_layer(conv, kernel_inputs[0], reference, precision, kernel)
        row[kernel] = {"error": error, "ok": ok}
        if kernel == "triton":
            row[kernel]["config"] = conv.triton_config_used()  # the tuner's variant and tiles
        if ok:
            calls[kernel] = (conv, kernel_inputs)
    times = timings(device, cuda_graphs)(calls, repeats)
    for name, t in times.items():
        row.setdefault(name, {}).update(ms=1e3 * t["median"], p10=1e3 * t["p10"], p90=1e3 * t["p90"], runs=t["runs"],
                                        vs_cudnn=t["median"] / times["cudnn"]["median"])
    return row


def random_regrouped_layer(c_out, c_in, k, unit, generator, density=0.3, cn=4, b2=2, empty_row_every=7):
    """(regrouped weight, blocks, bias) of a random layer: a random mask with
    every `empty_row_every`-th row empty (so some rows lie outside every
    block), regrouped with small parts (cn parts, nn 8)."""
    weight = torch.randn(c_out, c_in, k, k, generator=generator)
    mask = (torch.rand(c_out, c_in, k, k, generator=generator) < density).float()
    mask[::empty_row_every] = 0
    new_mask, info = regroup_layer(mask, cn=cn, nn=8, b2=b2, unit=unit)
    if not info.blocks:
        raise ValueError(f"no block in a random {c_out}x{c_in}x{k}x{k} layer: lower b2 or cn")
    return weight * new_mask, info.blocks, torch.randn(c_out, generator=generator)


def regroup_layer_by_rows(layer_mask, rows_per_part, unit, t1=1.5, nn=32):
    """(regrouped mask, LayerRegroup) of one layer with parts of about
    `rows_per_part` rows (cn = c_out / rows_per_part, b2 = rows_per_part / 2)."""
    cn = max(1, layer_mask.shape[0] // rows_per_part)
    return regroup_layer(layer_mask, t1, cn, nn, rows_per_part // 2, 0, "greedy", unit)


def regroup_by_rows(mask, rows_per_part, unit, t1=1.5, nn=32):
    """Regroup every layer with parts of about `rows_per_part` rows: every
    layer gets blocks. Returns (regrouped Mask, {layer: LayerRegroup})."""
    new, infos = Mask(), {}
    for name, layer_mask in mask.items():
        new[name], infos[name] = regroup_layer_by_rows(layer_mask, rows_per_part, unit, t1, nn)
    return new, infos


def conv_input_shapes(model, input_shape):
    """{conv name: the shape of its input}, from one forward pass of one
    image of zeros (the batch of `input_shape` put back: eval mode keeps
    images independent, and a ResNet-50 at 224x224 passes in a moment)."""
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, (input_shape[0],) + tuple(i[0].shape[1:]))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1,) + tuple(input_shape[1:])))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def resnet18_tickets(sparsity, rows_per_part, unit, batch, seed=0):
    """(masked model, regrouped Mask, infos, conv input shapes at `batch`) of
    bench.network.generated_ticket's CIFAR ResNet-18 (the benchmark tickets of profile/)."""
    _, masked, mask = generated_ticket("res18", sparsity, seed=seed)
    regrouped_mask, infos = regroup_by_rows(mask, rows_per_part, unit)
    return masked, regrouped_mask, infos, conv_input_shapes(masked, (batch, 3, 32, 32))
