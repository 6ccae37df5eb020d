"""Refill and refill+: turn an unstructured mask into a channel-wise one.

For each masked convolution (mask M with c_out rows of n = c_in*kh*kw
entries), every output channel gets a score and the k best channels are kept
whole, the rest removed whole:

    k = max(1, floor(d + (c_out - d) * r)),  d = nnz(M) / n

d is the number of channels that holds as many weights as M (refill, r = 0);
r > 0 refills more channels (refill+). With `round_to` N > 1, k is then
rounded up to a multiple of N (at most c_out): vendor kernels compute
channels in blocks (oneDNN 16, tensor cores 8), so 38 channels cost about
what 48 do. The extra channels are the next ones in the criterion's order,
so every kept channel still scores at least as high as every removed one.
Ties break towards the lower channel index. `count="original"` keeps what
the original code keeps instead (k + 1 channels when scores are distinct;
see original_rule and docs/fidelity.md). Criteria (registry `CRITERIA`):

- remain:    unpruned weights in the channel;
- magnitude: l1 norm of the channel's remaining trained weights (the paper's best);
- l1 / l2:   l1 / l2 norm of the channel's output feature map on a batch;
- saliency:  sum |activation x gradient| of the channel's output on a batch.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pruner.mask import Mask
from pruner.masking import masked_weight
from utils.errors import InvalidInput


def kept_channels(layer_mask, rate, round_to=1):
    """k for one layer's mask (shape [c_out, ...]), rounded up to a multiple
    of `round_to` (at most c_out)."""
    c_out = layer_mask.shape[0]
    d = float(layer_mask.count_nonzero()) / (layer_mask.numel() / c_out)
    k = max(1, min(c_out, math.floor(d + (c_out - d) * rate + 1e-9)))
    return min(c_out, round_up(k, round_to))


def round_up(count, multiple):
    """The smallest multiple of `multiple` that is at least `count`."""
    return -(-count // multiple) * multiple


def _weight_scores(kind):
    def score(model, mask, batch):
        modules = dict(model.named_modules())
        out = {}
        for name, m in mask.items():
            w = masked_weight(modules[name]).detach().float().cpu() * m  # trained weights that remain
            out[name] = m.flatten(1).sum(1) if kind == "remain" else w.abs().flatten(1).sum(1)
        return out
    return score


def _feature_scores(kind):
    """Scores from the output feature maps of each masked conv on `batch`."""
    def score(model, mask, batch):
        if batch is None:
            raise InvalidInput(f"refill criterion '{kind}' needs a batch of training data")
        modules = dict(model.named_modules())
        outputs, handles = {}, []

        def keep(name):
            def hook(module, inputs, output):
                if kind == "saliency":
                    output.retain_grad()
                outputs[name] = output
            return hook

        for name in mask:
            handles.append(modules[name].register_forward_hook(keep(name)))
        was_training = model.training
        model.eval()  # BN statistics of the trained ticket, not of one batch
        images, targets = batch
        device = next(model.parameters()).device
        try:
            with torch.set_grad_enabled(kind == "saliency"):
                logits = model(images.to(device))
                if kind == "saliency":
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(logits, targets.to(device)).backward()
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        scores = {}
        for name, out in outputs.items():
            if kind == "l1":
                s = out.detach().abs().sum((0, 2, 3))
            elif kind == "l2":
                s = out.detach().pow(2).sum((0, 2, 3)).sqrt()
            else:
                s = (out.detach() * out.grad).abs().sum((0, 2, 3))
            scores[name] = s.float().cpu()
        if kind == "saliency":
            model.zero_grad(set_to_none=True)
        return scores
    score.needs_batch = True
    return score


CRITERIA = {
    "remain": _weight_scores("remain"),
    "magnitude": _weight_scores("magnitude"),
    "l1": _feature_scores("l1"),
    "l2": _feature_scores("l2"),
    "saliency": _feature_scores("saliency"),
}


def needs_batch(criterion):
    """Whether `criterion` scores channels on a batch of training images."""
    return getattr(CRITERIA[criterion], "needs_batch", False)


def criterion_names():
    return sorted(CRITERIA)


REFILL_COUNTS = ("paper", "original")


def check_refill_args(criterion, rate, round_to=1, count="paper"):
    if count not in REFILL_COUNTS:
        raise InvalidInput(f"--refill_count must be one of {', '.join(REFILL_COUNTS)}, got '{count}'")
    if criterion not in CRITERIA:
        raise InvalidInput(f"unknown refill criterion '{criterion}'; valid: {', '.join(criterion_names())}")
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f"fill-back rate must be in [0, 1], got {rate}")
    check_round_to(round_to)


def check_round_to(round_to):
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InvalidInput(f"--round_to must be a positive whole number of channels (1 = no rounding), got {round_to}")


def channel_scores(model, mask, criterion, batch=None):
    """Per masked layer, a [c_out] score vector (model carries the trained weights)."""
    return CRITERIA[criterion](model, mask, batch)


@dataclass
class LayerRefill:
    """What refill keeps of one layer."""
    whole: torch.Tensor  # output channels kept whole
    left: torch.Tensor  # channels left with their unstructured rows (the original rule's other tied channels)
    unrounded: int  # whole channels before --round_to


def original_count(layer_mask, rate):
    """The original code's channel count: floor(d + (c_out - d) * rate), not
    at least 1 (its threshold rule then keeps one channel more)."""
    c_out = layer_mask.shape[0]
    d = float(layer_mask.count_nonzero()) / (layer_mask.numel() / c_out)
    return min(c_out, math.floor(d + (c_out - d) * rate))


def original_rule(scores, k, generator=None):
    """(channels kept whole, tied channels left as they were) under the
    original code's rule: with t the (c_out - k)-th smallest score, every
    channel scoring above t is kept whole, one channel drawn at random among
    those scoring exactly t is kept whole too, and the other channels at t
    keep their unstructured rows. k + 1 whole channels when scores are
    distinct; k >= c_out keeps every channel."""
    c_out = len(scores)
    if k >= c_out:
        return torch.arange(c_out), torch.arange(0)
    threshold = torch.kthvalue(scores, c_out - k).values
    above = torch.nonzero(scores > threshold).flatten()
    tied = torch.nonzero(scores == threshold).flatten()
    pick = int(torch.randint(len(tied), (1,), generator=generator))
    return torch.cat([above, tied[pick:pick + 1]]), torch.cat([tied[:pick], tied[pick + 1:]])


def select_channels(scores, layer_mask, rate, round_to=1, count="paper", generator=None):
    """The LayerRefill of one layer from its channel scores. `paper`: the k
    best channels; `original`: the original code's rule (original_rule).
    `round_to` then adds the next best channels up to a multiple of N."""
    c_out = len(scores)
    order = torch.sort(scores, descending=True, stable=True).indices  # ties towards the lower index
    if count == "paper":
        whole, left = order[:kept_channels(layer_mask, rate)], torch.arange(0)
    else:
        whole, left = original_rule(scores, original_count(layer_mask, rate), generator)
    unrounded = len(whole)
    missing = min(c_out, round_up(unrounded, round_to)) - unrounded
    if missing:
        taken = torch.zeros(c_out, dtype=torch.bool)
        taken[whole] = True
        extra = order[~taken[order]][:missing]
        whole = torch.cat([whole, extra])
        left = left[~torch.isin(left, extra)]
    return LayerRefill(whole, left, unrounded)


def refill_layers(model, mask, criterion="magnitude", rate=0.0, batch=None, round_to=1, count="paper", seed=0):
    """{layer: LayerRefill} of `mask` (the model carries the trained weights);
    the original rule's random picks come from a generator seeded with `seed`,
    drawn layer by layer in mask order."""
    check_refill_args(criterion, rate, round_to, count)
    scores = channel_scores(model, mask, criterion, batch)
    generator = torch.Generator().manual_seed(seed)
    return {name: select_channels(scores[name], m, rate, round_to, count, generator) for name, m in mask.items()}


def refilled_mask(mask, layers):
    """The Mask that keeps each layer's whole channels and leaves its `left` rows as they were."""
    new_mask = Mask()
    for name, m in mask.items():
        rows = torch.zeros(m.shape[0], *([1] * (m.dim() - 1)))
        rows[layers[name].whole] = 1.0
        new = rows.expand_as(m).clone()
        new[layers[name].left] = m[layers[name].left].to(new.dtype)
        new_mask[name] = new
    return new_mask


def refill(model, mask, criterion="magnitude", rate=0.0, batch=None, round_to=1, count="paper", seed=0):
    """The channel-wise mask: per layer the k best channels of `mask`, whole
    (k rounded up to a multiple of `round_to`); `count="original"` applies
    the original code's rule instead (select_channels)."""
    return refilled_mask(mask, refill_layers(model, mask, criterion, rate, batch, round_to, count, seed))


def refill_layers_report(mask, layers):
    """Per layer: channels, whole channels kept before and after rounding,
    the weights rounding added, tied channels left unstructured (the original
    rule), density before and after."""
    new_mask = refilled_mask(mask, layers)
    report = {}
    for name, m in mask.items():
        per_channel = m[0].numel()  # weights in one whole output channel
        layer = layers[name]
        report[name] = {"channels": m.shape[0], "kept_channels_unrounded": layer.unrounded,
                        "kept_channels": len(layer.whole), "tied_channels_left": len(layer.left),
                        "weights_added_by_rounding": (len(layer.whole) - layer.unrounded) * per_channel,
                        "density_before": float(m.count_nonzero()) / m.numel(),
                        "density_after": float(new_mask[name].count_nonzero()) / m.numel()}
    return report


def format_refill_report(layers):
    """One line per layer: kept channels (before rounding), density change."""
    lines = []
    for name, info in layers.items():
        rounded = info["kept_channels"] != info["kept_channels_unrounded"]
        kept = f"{info['kept_channels']:>4}/{info['channels']:<4}"
        extra = f" (k {info['kept_channels_unrounded']} rounded up, +{info['weights_added_by_rounding']} weights)" if rounded else ""
        if info.get("tied_channels_left"):
            extra += f" + {info['tied_channels_left']} tied channel(s) left unstructured"
        lines.append(f"  {name:<24} {kept} channels | density {100 * info['density_before']:6.2f}% -> "
                     f"{100 * info['density_after']:6.2f}%{extra}")
    added = sum(info["weights_added_by_rounding"] for info in layers.values())
    if any(info["kept_channels"] != info["kept_channels_unrounded"] for info in layers.values()):
        lines.append(f"  rounding added {added} weights in all")
    return "\n".join(lines)


def is_channel_wise(layer_mask):
    rows = layer_mask.flatten(1)
    return bool(torch.all((rows.sum(1) == 0) | (rows.sum(1) == rows.shape[1])))


def kept_rows(layer_mask):
    """Indices of the output channels a channel-wise mask keeps."""
    return torch.nonzero(layer_mask.flatten(1).sum(1) > 0).flatten()
