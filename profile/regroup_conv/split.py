"""Split a ticket into one file per masked convolution: its masked weight,
its mask, and (for our checkpoints, which name the architecture) the
layer's stride, padding and input size, for the per-layer profilers.

    python profile/regroup_conv/split.py runs/imp/3checkpoint.pth.tar runs/layers

Reads our checkpoints and the original code's (`<layer>.weight_orig` and
`<layer>.weight_mask` in `state_dict`, `module.` prefixes allowed).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from pruner.mask import Mask  # noqa: E402
from utils.checkpoint import load_file, save_atomic, state_dict_of  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint with masks")
    add_trust_flag(p)
    p.add_argument("out_dir", help="directory for the per-layer files")
    return p


def layer_geometry(ckpt, state_dict):
    """{layer: stride, padding, input_hw} when the checkpoint names its architecture."""
    args = ckpt.get("args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict) or "arch" not in args or "dataset" not in args:
        return {}
    from models import build_model
    from pruner.masking import load_weights
    from app.datasets import load_dataset
    try:
        spec = load_dataset(args["dataset"], args.get("data", "datasets")).spec
    except InvalidInput:
        return {}  # the data is not on this machine: geometry comes from the profilers' flags
    model = build_model(args["arch"], spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
    load_weights(model, state_dict)
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, tuple(i[0].shape[2:]))))
    with torch.no_grad():
        model.eval()(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    modules = dict(model.named_modules())
    return {n: {"stride": modules[n].stride, "padding": modules[n].padding, "input_hw": hw} for n, hw in shapes.items()}


def main(args):
    ckpt = load_file(args.checkpoint, "checkpoint", args.trust_checkpoint)
    state_dict = state_dict_of(ckpt, args.checkpoint)
    mask = Mask.from_state_dict(state_dict)
    if not mask:
        raise InvalidInput(f"'{args.checkpoint}' holds no masks (no '<layer>.weight_mask' entries)")
    geometry = layer_geometry(ckpt, state_dict)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, m in mask.items():
        weight = state_dict[name + ".weight_orig"].float() * m
        record = {"layer": name, "weight": weight, "mask": m.to(torch.uint8), "source": args.checkpoint,
                  **geometry.get(name, {})}
        path = os.path.join(args.out_dir, f"{name}.pth.tar")
        save_atomic(record, path)
        where = f" stride {record['stride']} padding {record['padding']} input {record['input_hw']}" if name in geometry else ""
        print(f"{path}: {tuple(weight.shape)} density {float(m.mean()):.4f}{where}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
