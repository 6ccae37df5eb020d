"""Exporting a retrained ticket in the form that runs fast: the refilled
ticket physically slimmed (torch.export .pt2 and/or ONNX), the regrouped
ticket as gathers and grouped convolutions (ONNX). Each file is written
only after it reproduces the masked model's outputs; the source is the
run's best checkpoint, or --checkpoint with --evaluate. rehearse_export
does the same exports before training, on the untrained ticket, so that
whatever would refuse them refuses before the first epoch.
"""
import copy
import os
import tempfile
import time

import torch

from app.config import RegroupConfig
from app.datasets import load_dataset, make_loader, model_for
from app.onnx_export import export_onnx
from kernels.grouped import grouped_model
from pruner.masking import apply_mask, load_weights
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
    data = load_dataset(train.dataset, train.data, split_file=train.split_file)
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
    write_refilled(model, images, cfg.export_slim, cfg.export_onnx)


def write_refilled(model, images, slim_path, onnx_path, say=print):
    """Slim the masked `model` (eval mode), check it on `images` and write it
    to `slim_path` (.pt2) and/or `onnx_path`, each checked after writing."""
    slimmed = slim(model.eval())
    diff = checked_difference(slimmed, model, images, "the slimmed model")
    if slim_path:
        def check(loaded):
            for batch in (images, images[:1]):  # the batch dimension is dynamic: any size runs
                checked_difference(loaded, model, batch, "the exported program")
        export_program(slimmed, images[:2], slim_path, check)
        say(f"slimmed model exported to {slim_path} (torch.export, dynamic batch): "
            f"{size_line(model, slimmed, images)}, max |output difference| {diff:.1e}")
    if onnx_path:
        error = export_onnx(slimmed, [images[:2], images, images[:1]], onnx_path)
        say(f"slimmed model exported to {onnx_path} (ONNX, dynamic batch; checked by onnx.checker and in "
            f"ONNX Runtime): {size_line(model, slimmed, images)}, max |ONNX Runtime - PyTorch| {error:.1e}")


def export_regrouped(cfg, regroup):
    """--export_onnx of the regrouped ticket: channel-unit block layers as
    gathers and grouped convolutions, every other layer as its masked dense
    convolution. With --evaluate, the blocks follow the settings of the run
    that saved the checkpoint."""
    model, images, saved = exported_ticket(cfg)
    how = saved if cfg.evaluate else {}
    unit, parts, b2 = (how.get(key, getattr(regroup, key)) for key in ("regroup_unit", "cn", "b2"))
    write_regrouped(model, images, unit, parts, b2, cfg.export_onnx)


def write_regrouped(model, images, unit, parts, b2, onnx_path, say=print):
    """The masked `model` (eval mode) as gathers and grouped convolutions
    (kernels.grouped), checked on `images`, written to `onnx_path` and checked there."""
    exported, forms = grouped_model(model, unit, parts, b2)
    checked_difference(exported, model, images, "the grouped model")
    grouped = sum(form.startswith("grouped") for form in forms.values())
    if unit == "weight":
        say("--regroup_unit weight: ONNX has no operator for weight-wise blocks, so every layer is exported as "
            "its masked dense convolution; this form does not exploit the sparsity (regroup with "
            "--regroup_unit channel for grouped convolutions)")
    elif grouped < len(forms):
        say(f"{len(forms) - grouped} of {len(forms)} pruned layers have no channel blocks and are exported as "
            "masked dense convolutions: " + ", ".join(n for n, form in forms.items() if not form.startswith("grouped")))
    error = export_onnx(exported, [images[:2], images, images[:1]], onnx_path)
    shape = (1, *images.shape[1:])
    say(f"regrouped ticket exported to {onnx_path} (ONNX, dynamic batch; checked by onnx.checker and in "
        f"ONNX Runtime): {grouped} of {len(forms)} pruned layers as grouped convolutions, "
        f"{model_flops(exported, shape) / 1e6:.2f} MFLOPs per image executed (dense "
        f"{model_flops(model, shape) / 1e6:.2f}; groups are padded to the largest block), "
        f"max |ONNX Runtime - PyTorch| {error:.1e}")


def rehearse_export(cfg, restructure, model, mask, test_set):
    """Before training: every export the run was asked for, done once on the
    restructured ticket at its starting weights into a temporary folder and
    thrown away, so what would refuse the trained ticket (a mask slimming
    cannot cut, a model torch.export or the ONNX exporter cannot take, a
    missing package, ONNX Runtime disagreeing) refuses now, in its one line,
    before the first epoch. Prints one line saying so."""
    if not (cfg.export_slim or cfg.export_onnx):
        return
    ticket = copy.deepcopy(model).cpu()
    apply_mask(ticket, mask)
    ticket.eval()
    images = next(iter(make_loader(test_set, 64, False, 0)))[0]
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        slim_path = cfg.export_slim and os.path.join(folder, "ticket.pt2")
        onnx_path = cfg.export_onnx and os.path.join(folder, "ticket.onnx")
        if isinstance(restructure, RegroupConfig):
            write_regrouped(ticket, images, restructure.regroup_unit, restructure.cn, restructure.b2, onnx_path,
                            say=lambda line: None)
        else:
            write_refilled(ticket, images, slim_path, onnx_path, say=lambda line: None)
    print(f"exports rehearsed on the untrained ticket ({time.perf_counter() - tic:.1f} s): "
          + ", ".join(p for p in (cfg.export_slim, cfg.export_onnx) if p) + " will be written after training")
