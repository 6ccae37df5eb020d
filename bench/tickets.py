"""Structured tickets against the vendor library, per layer and end to end,
checked before they are timed (DESIGN.md §7). Used by
profile/regroup_conv/conv.py, profile/end_to_end.py and profile/gpu_check.py.

Per layer: cuDNN (benchmark mode) on the regrouped weight computed densely,
against the Triton kernel and the CUDA C kernel, in one precision, on the
same rotating channels-last inputs (the CUDA C kernel reads NCHW fp32, its
only layout and dtype: it gets NCHW fp32 copies of the same inputs).
End to end: the dense model, the regrouped ticket (layers where the kernel is
slower keep cuDNN) and the slimmed refill ticket, in the same precision and
layout, each checked against the masked model it implements.
"""

import torch
import torch.nn.functional as F

from models import build_model
from kernels.regrouped import RegroupedConv2d, regroup_model
from pruner.magnitude import global_magnitude_prune
from pruner.mask import Mask
from pruner.masking import apply_mask, load_plain_weights, refresh_masked_weights, strip_masks
from pruner.refill import refill
from pruner.regroup import regroup_layer
from pruner.slim import slim
from utils.errors import InvalidInput
from bench.gpu import apply_precision, relative_error, rotating_inputs
from bench.network import copied, trained_looking  # noqa: F401 (callers name them from here too)
from utils.timing import eager_timings, graph_timings

TOLERANCE = {"fp32": 1e-5, "tf32": 3e-3, "fp16": 3e-3, "bf16": 1.5e-2}  # relative error of one layer vs float64
MODEL_TOLERANCE = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 6e-2}  # a whole network vs float64


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
    timer = graph_timings if cuda_graphs else eager_timings
    times = timer(calls, repeats)
    for name, t in times.items():
        row.setdefault(name, {}).update(ms=1e3 * t["median"], p10=1e3 * t["p10"], p90=1e3 * t["p90"], runs=t["runs"],
                                        vs_cudnn=t["median"] / times["cudnn"]["median"])
    return row


def build_tickets(masked, mask, regroup):
    """The forms of one ticket: dense (same weights, no masks), masked,
    refilled (magnitude) and slimmed, regroup's masked reference; `regroup`
    maps the mask to (regrouped mask, infos)."""
    dense = strip_masks(copied(masked))  # then the unpruned weights: dense timings never run on zeros
    load_plain_weights(dense, {k.replace("_orig", ""): v for k, v in masked.state_dict().items()
                               if not k.endswith("_mask")})
    refilled_mask = refill(masked, mask, "magnitude", 0.0)
    refilled = copied(masked)
    apply_mask(refilled, refilled_mask)
    regrouped_mask, infos = regroup(mask)
    regroup_reference = copied(masked)
    apply_mask(regroup_reference, regrouped_mask)
    return {"dense": dense, "masked": masked, "refilled": refilled, "refilled_mask": refilled_mask,
            "slimmed": slim(refilled), "regroup_reference": regroup_reference, "regrouped_mask": regrouped_mask,
            "infos": infos}


@torch.no_grad()
def end_to_end_gpu(tickets, input_shape, precision, unit, kernel="triton", repeats=50, cuda_graphs=True,
                   device="cuda", seed=0):
    """Dense vs regrouped (per-layer choice, measured on this input) vs
    slimmed refill on the GPU, in one precision, channels-last: {variant:
    {ms, p10, p90, speedup, error}}, the layer choice, and the error check."""
    dtype = apply_precision(precision)
    fmt = torch.channels_last
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = rotating_inputs(input_shape, dtype, device, generator=generator, most=16)

    def on_device(model):
        return copied(model).to(device=device, dtype=dtype, memory_format=fmt).eval()
    regrouped, choice = regroup_model(on_device(tickets["regroup_reference"]), tickets["infos"], unit,
                                      example_input=inputs[0], kernel=kernel)
    strip_masks(regrouped)  # its layers without blocks run as plain convolutions on the zeroed weights
    variants = {"dense": (on_device(tickets["dense"]), tickets["dense"]),
                "regrouped": (regrouped, tickets["regroup_reference"]),
                "slimmed refill": (on_device(tickets["slimmed"]), tickets["refilled"])}
    result = {"precision": precision, "input": list(input_shape), "choice": choice, "variants": {}}
    for name, (model, reference) in variants.items():
        expected = copied(reference).to(device=device, dtype=torch.float64).eval()(inputs[0].double())
        error = relative_error(model(inputs[0]), expected)
        if not error < MODEL_TOLERANCE[precision]:
            raise InvalidInput(f"{name} differs from the masked model it implements: relative error {error:.2e} "
                            f"(limit {MODEL_TOLERANCE[precision]:g} in {precision})")
        result["variants"][name] = {"error": error}
    timer = graph_timings if cuda_graphs else eager_timings
    times = timer({name: (model, inputs) for name, (model, _) in variants.items()}, repeats)
    for name, t in times.items():
        result["variants"][name].update(ms=1e3 * t["median"], p10=1e3 * t["p10"], p90=1e3 * t["p90"],
                                        speedup=times["dense"]["median"] / t["median"])
    return result


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


def regroup_by_rows(mask, rows_per_part, unit, t1=1.5, nn=32):
    """Regroup every layer with parts of about `rows_per_part` rows (cn =
    c_out / rows_per_part, b2 = rows_per_part / 2): every layer gets blocks.
    Returns (regrouped Mask, {layer: LayerRegroup})."""
    new, infos = Mask(), {}
    for name, layer_mask in mask.items():
        cn = max(1, layer_mask.shape[0] // rows_per_part)
        new[name], infos[name] = regroup_layer(layer_mask, t1, cn, nn, rows_per_part // 2, 0, "greedy", unit)
    return new, infos


def conv_input_shapes(model, input_shape):
    """{conv name: the shape of its input} for one forward pass of zeros."""
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, tuple(i[0].shape))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def resnet18_ticket(sparsity, seed=0):
    """(masked CIFAR ResNet-18, its Mask): one seeded global magnitude step
    on the initial weights (the benchmark tickets of profile/)."""
    torch.manual_seed(seed)
    model = build_model("res18", 10, 3).eval()
    mask = global_magnitude_prune(model, sparsity)
    apply_mask(model, mask)
    return model, mask


def resnet18_tickets(sparsity, rows_per_part, unit, batch, seed=0):
    """(masked model, regrouped Mask, infos, conv input shapes at `batch`) of resnet18_ticket."""
    masked, mask = resnet18_ticket(sparsity, seed)
    regrouped_mask, infos = regroup_by_rows(mask, rows_per_part, unit)
    return masked, regrouped_mask, infos, conv_input_shapes(masked, (batch, 3, 32, 32))
