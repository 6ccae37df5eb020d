"""FLOPs from torch.utils.flop_counter (one multiply-add = 2 FLOPs).

`model_flops` counts what a model really executes (a slimmed model counts
fewer); `masked_flops` scales each masked convolution's count by its mask
density — what an ideal sparse kernel would execute — for per-layer reports
of dense, unstructured, refilled and regrouped tickets.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def _counted(model, input_shape):
    """A FlopCounterMode that has seen one eval-mode forward pass."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    return counter


def model_flops(model, input_shape):
    """Total forward FLOPs for one input of `input_shape` (batch included)."""
    return _counted(model, input_shape).get_total_flops()


def conv_flops(model, input_shape):
    """Dense forward FLOPs of every Conv2d / Linear, by module name."""
    per_module = _counted(model, input_shape).get_flop_counts()
    root = type(model).__name__
    layers = (n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    return {name: sum(per_module.get(f"{root}.{name}", {}).values()) for name in layers}


def flops_share(model, input_shape, names):
    """The share of the model's conv/linear FLOPs in the layers `names`."""
    per_layer = conv_flops(model, input_shape)
    return sum(per_layer[name] for name in names) / sum(per_layer.values())


def masked_flops(model, input_shape, masks):
    """Per-layer FLOPs with each masked layer scaled by its density, for each
    named mask in `masks` ({"unstructured": Mask, "refill": Mask, ...}); a
    "dense" column is always included. Returns {layer: {column: flops}}."""
    dense = conv_flops(model, input_shape)
    table = {}
    for layer, flops in dense.items():
        row = {"dense": flops}
        for column, mask in masks.items():
            m = mask.get(layer)
            row[column] = flops * (float(m.count_nonzero()) / m.numel() if m is not None else 1.0)
        table[layer] = row
    return table


def flops_report(table):
    """Printable per-layer table plus totals (MFLOPs)."""
    columns = list(next(iter(table.values())).keys())
    width = max(len(n) for n in table)
    lines = [f"{'layer':<{width}}  " + "  ".join(f"{c:>12}" for c in columns)]
    for layer, row in table.items():
        lines.append(f"{layer:<{width}}  " + "  ".join(f"{row[c] / 1e6:12.3f}" for c in columns))
    totals = {c: sum(row[c] for row in table.values()) for c in columns}
    lines.append(f"{'total MFLOPs':<{width}}  " + "  ".join(f"{totals[c] / 1e6:12.3f}" for c in columns))
    lines.append(f"{'x fewer than dense':<{width}}  " + "  ".join(
        f"{totals['dense'] / max(totals[c], 1):12.2f}" for c in columns))
    return "\n".join(lines)
