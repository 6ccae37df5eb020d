"""Exporting a retrained ticket in the form that runs fast: the refilled
ticket physically slimmed (torch.export .pt2 and/or ONNX), the regrouped
ticket as gathers and grouped convolutions (ONNX). Each file is written
only after it reproduces the masked model's outputs; the source is the
run's best checkpoint, or --checkpoint with --evaluate.
"""
import torch

from app.datasets import load_dataset, make_loader, model_for
from app.onnx_export import export_onnx
from kernels.grouped import grouped_model
from pruner.masking import load_weights
from pruner.slim import slim
from utils.checkpoint import best_path, export_program, load_file, state_dict_of
from utils.errors import InvalidInput
from utils.flops import model_flops

MAX_DIFFERENCE = 1e-4  # fp32 outputs of an export against the masked model


def exported_ticket(cfg):
    """(the retrained masked model in eval mode, test images to check an
    export on, the flags of the run that saved it or {})."""
    train = cfg.train
    source = train.checkpoint if cfg.evaluate else best_path(train.save_dir)
    ckpt = load_file(source, "checkpoint to export", train.trust_checkpoint)
    if "state_dict" not in ckpt:
        raise InvalidInput(f"'{source}' holds no weights: retrain with --save_model to export the ticket")
    data = load_dataset(train.dataset, train.data)
    model = model_for(train.arch, data.spec)
    load_weights(model, state_dict_of(ckpt, source))
    images = next(iter(make_loader(data.test, 64, False, 0)))[0]
    saved_flags = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return model.eval(), images, saved_flags


def checked_difference(exported, model, images, what):
    with torch.no_grad():
        diff = (exported(images) - model(images)).abs().max().item()
    if not diff <= MAX_DIFFERENCE:
        raise InvalidInput(f"{what} differs from the masked model by {diff:.2e}; not exported")
    return diff


def size_line(model, slimmed, images):
    shape = (1, *images.shape[1:])
    dense_flops, slim_flops = model_flops(model, shape), model_flops(slimmed, shape)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in slimmed.parameters()))
    return (f"{params[1]:,} parameters (masked model {params[0]:,}), {slim_flops / 1e6:.2f} MFLOPs per image "
            f"({dense_flops / slim_flops:.2f}x fewer than dense)")


def export_refilled(cfg):
    """--export_slim (torch.export program, checked after writing) and
    --export_onnx of the physically slimmed refilled ticket."""
    model, images, _ = exported_ticket(cfg)
    slimmed = slim(model.eval())
    diff = checked_difference(slimmed, model, images, "the slimmed model")
    if cfg.export_slim:
        def check(loaded):
            for batch in (images, images[:1]):  # the batch dimension is dynamic: any size runs
                checked_difference(loaded, model, batch, "the exported program")
        export_program(slimmed, images[:2], cfg.export_slim, check)
        print(f"slimmed model exported to {cfg.export_slim} (torch.export, dynamic batch): "
              f"{size_line(model, slimmed, images)}, max |output difference| {diff:.1e}")
    if cfg.export_onnx:
        error = export_onnx(slimmed, [images[:2], images, images[:1]], cfg.export_onnx)
        print(f"slimmed model exported to {cfg.export_onnx} (ONNX, dynamic batch; checked by onnx.checker and in "
              f"ONNX Runtime): {size_line(model, slimmed, images)}, max |ONNX Runtime - PyTorch| {error:.1e}")


def export_regrouped(cfg, regroup):
    """--export_onnx of the regrouped ticket: channel-unit block layers as
    gathers and grouped convolutions, every other layer as its masked dense
    convolution. With --evaluate, the blocks follow the settings of the run
    that saved the checkpoint."""
    model, images, saved = exported_ticket(cfg)
    how = saved if cfg.evaluate else {}
    unit, parts, b2 = (how.get(key, getattr(regroup, key)) for key in ("regroup_unit", "cn", "b2"))
    exported, forms = grouped_model(model, unit, parts, b2)
    checked_difference(exported, model, images, "the grouped model")
    grouped = sum(form.startswith("grouped") for form in forms.values())
    if unit == "weight":
        print("--regroup_unit weight: ONNX has no operator for weight-wise blocks, so every layer is exported as "
              "its masked dense convolution; this form does not exploit the sparsity (regroup with "
              "--regroup_unit channel for grouped convolutions)")
    elif grouped < len(forms):
        print(f"{len(forms) - grouped} of {len(forms)} pruned layers have no channel blocks and are exported as "
              "masked dense convolutions: " + ", ".join(n for n, form in forms.items() if not form.startswith("grouped")))
    error = export_onnx(exported, [images[:2], images, images[:1]], cfg.export_onnx)
    shape = (1, *images.shape[1:])
    print(f"regrouped ticket exported to {cfg.export_onnx} (ONNX, dynamic batch; checked by onnx.checker and in "
          f"ONNX Runtime): {grouped} of {len(forms)} pruned layers as grouped convolutions, "
          f"{model_flops(exported, shape) / 1e6:.2f} MFLOPs per image executed (dense "
          f"{model_flops(model, shape) / 1e6:.2f}; groups are padded to the largest block), "
          f"max |ONNX Runtime - PyTorch| {error:.1e}")
