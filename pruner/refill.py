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
Ties break towards the lower channel index. Criteria (registry `CRITERIA`):

- remain:    unpruned weights in the channel;
- magnitude: l1 norm of the channel's remaining trained weights (the paper's best);
- l1 / l2:   l1 / l2 norm of the channel's output feature map on a batch;
- saliency:  sum |activation x gradient| of the channel's output on a batch.
"""
import math

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


def check_refill_args(criterion, rate, round_to=1):
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


def refill(model, mask, criterion="magnitude", rate=0.0, batch=None, round_to=1):
    """The channel-wise mask: per layer the k best channels of `mask`, whole
    (k rounded up to a multiple of `round_to`)."""
    check_refill_args(criterion, rate, round_to)
    scores = channel_scores(model, mask, criterion, batch)
    new_mask = Mask()
    for name, m in mask.items():
        k = kept_channels(m, rate, round_to)
        order = torch.sort(scores[name], descending=True, stable=True).indices
        rows = torch.zeros(m.shape[0])
        rows[order[:k]] = 1.0
        new_mask[name] = rows.view(-1, *([1] * (m.dim() - 1))).expand_as(m).clone()
    return new_mask


def refill_layers_report(mask, new_mask, rate, round_to=1):
    """Per layer: channels, k before and after rounding, the weights rounding
    added, density before and after."""
    layers = {}
    for name, m in mask.items():
        per_channel = m[0].numel()  # weights in one whole output channel
        k_paper, k = kept_channels(m, rate), kept_channels(m, rate, round_to)
        layers[name] = {"channels": m.shape[0], "kept_channels_unrounded": k_paper, "kept_channels": k,
                        "weights_added_by_rounding": (k - k_paper) * per_channel,
                        "density_before": float(m.count_nonzero()) / m.numel(),
                        "density_after": float(new_mask[name].count_nonzero()) / m.numel()}
    return layers


def format_refill_report(layers):
    """One line per layer: kept channels (before rounding), density change."""
    lines = []
    for name, info in layers.items():
        rounded = info["kept_channels"] != info["kept_channels_unrounded"]
        kept = f"{info['kept_channels']:>4}/{info['channels']:<4}"
        extra = f" (k {info['kept_channels_unrounded']} rounded up, +{info['weights_added_by_rounding']} weights)" if rounded else ""
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
