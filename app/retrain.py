"""The retraining flow shared by main_eval_fillback.py and
main_eval_regroup_retrain.py: load a ticket (mask + trained weights from
--mask_dir, rewind point from --pretrained), restructure its mask, reset the
weights, retrain with the shared loop, report.

A script supplies `restructure(model, mask, data, args) -> (new_mask,
per-layer info dict)`; the model holds the ticket's trained weights and
mask when it is called.
"""
import os

from models import build_model
from pruner.mask import Mask
from pruner.masking import apply_mask, check_compatible, load_plain_weights, load_weights
from app.arguments import add_general, add_ticket, add_training, checkpoint_bytes, finish, prepare_save_dir
from utils.checkpoint import best_path, checkpoint_path, load_file, plain_weights, state_dict_of
from app.datasets import load_dataset, make_loader
from utils.errors import UserError
from utils.flops import flops_report, masked_flops
from app.report import environment, plot_states, state_record, write_summary
from app.setup import build, resume_checkpoint
from app.training import eval_loader, evaluate, train_state

START_WEIGHTS = ("lt", "rewind_lt", "pt", "trained")


def add_retrain_args(parser, save_dir):
    add_general(parser, save_dir=save_dir)
    add_training(parser)
    add_ticket(parser)
    g = parser.add_argument_group("retraining")
    g.add_argument("--mask_dir", default=None, help="checkpoint whose masks (and trained weights) form the ticket")
    g.add_argument("--save_model", action="store_true", help="store weights and masks in the checkpoints")
    g.add_argument("--prune-type", dest="prune_type", default="lt", choices=START_WEIGHTS,
                   help="weights to retrain from: lt/rewind_lt = --pretrained's init_weight (the rewind point), "
                        "pt = --pretrained's weights, trained = --mask_dir's trained weights")
    g.add_argument("--evaluate", action="store_true", help="only evaluate --checkpoint")


def add_export_args(group, slim=False):
    """--export_onnx (and --export_slim for refill): files written from the
    best checkpoint after retraining, or from --checkpoint with --evaluate."""
    if slim:
        group.add_argument("--export_slim", default=None, metavar="FILE",
                           help="also export the physically slimmed model (from the best checkpoint, or from "
                                "--checkpoint with --evaluate) to FILE (.pt2, torch.export, dynamic batch), after "
                                "checking that the saved program gives the masked model's outputs")
    group.add_argument("--export_onnx", default=None, metavar="FILE",
                       help="also export the structured ticket (from the best checkpoint, or from --checkpoint with "
                            "--evaluate) as ONNX with a dynamic batch, kept only if it passes onnx.checker and gives "
                            "the PyTorch model's outputs in ONNX Runtime")


def check_export_args(args, flags):
    """Before training: each export flag given needs saved weights and a
    folder it can write (--save_dir itself is made and checked by the run)."""
    for flag in flags:
        path = getattr(args, flag)
        if not path:
            continue
        if not (args.save_model or args.evaluate):
            raise UserError(f"--{flag} needs the retrained weights: add --save_model (or use --evaluate --checkpoint)")
        folder = os.path.dirname(os.path.abspath(path))
        if folder != os.path.abspath(args.save_dir) and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise UserError(f"--{flag} '{path}': its folder does not exist or cannot be written")


def exported_ticket(args):
    """(the retrained masked model in eval mode, test images to check an export
    on, the arguments of the run that saved it or {}): from the run's best
    checkpoint, or --checkpoint with --evaluate."""
    source = args.checkpoint if args.evaluate else best_path(args.save_dir)
    ckpt = load_file(source, "checkpoint to export", args.trust_checkpoint)
    if "state_dict" not in ckpt:
        raise UserError(f"'{source}' holds no weights: retrain with --save_model to export the ticket")
    data = load_dataset(args.dataset, args.data)
    spec = data.spec
    model = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
    load_weights(model, state_dict_of(ckpt, source))
    images = next(iter(make_loader(data.test, 64, False, 0)))[0]
    saved_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return model.eval(), images, saved_args


def training_batch(data, args):
    """A fixed batch of training images for activation-based criteria."""
    return next(iter(make_loader(data.train, args.batch_size, True, 0, seed=args.seed)))


def start_weights(args, ticket_weights):
    if args.prune_type == "trained":
        return ticket_weights
    if not args.pretrained:
        raise UserError(f"--prune-type {args.prune_type} retrains from --pretrained: give --pretrained <checkpoint>")
    ckpt = load_file(args.pretrained, "--pretrained", args.trust_checkpoint)
    if args.prune_type in ("lt", "rewind_lt") and isinstance(ckpt, dict) and isinstance(ckpt.get("init_weight"), dict):
        return plain_weights(state_dict_of(ckpt["init_weight"], args.pretrained))
    return plain_weights(state_dict_of(ckpt, args.pretrained))


def run_evaluation(args, device, data, model, dist_ctx):
    if not args.checkpoint:
        raise UserError("--evaluate needs --checkpoint <file with weights> (a run saved with --save_model)")
    ckpt = load_file(args.checkpoint, "--checkpoint", args.trust_checkpoint)
    if not (isinstance(ckpt, dict) and "state_dict" in ckpt):
        raise UserError(f"--checkpoint '{args.checkpoint}' holds no weights (was the run saved with --save_model?)")
    weights = state_dict_of(ckpt, args.checkpoint)
    check_compatible(model, plain_weights(weights), f"--checkpoint '{args.checkpoint}'")
    load_weights(model, weights)
    mask = Mask.from_model(model)
    val, test = (evaluate(model, eval_loader(d, args, device, dist_ctx), device, args.amp, dist_ctx)
                 for d in (data.val, data.test))
    print(f"evaluate {args.checkpoint}: sparsity {100 * mask.sparsity():.2f}% | val {val:.2f}% | test {test:.2f}%")
    return {"val_acc": val, "test_acc": test}


def retrain(args, script, restructure):
    finish(args)
    checkpoint_file = checkpoint_path(args.save_dir)
    if args.evaluate:
        return run_evaluation(args, *build(args))
    if not args.mask_dir:
        raise UserError("--mask_dir <checkpoint with masks> is required (e.g. a main_imp.py {i}checkpoint.pth.tar)")
    resume = resume_checkpoint(
        args, checkpoint_file if os.path.exists(checkpoint_file) else None, os.path.basename(checkpoint_file)) \
        if args.resume else None
    if resume is None and os.path.exists(checkpoint_file):
        raise UserError(f"--save_dir '{args.save_dir}' already holds a run ({os.path.basename(checkpoint_file)}); "
                        "pass --resume to continue it or choose another --save_dir")
    device, data, model, dist_ctx = build(args)
    is_main = dist_ctx is None or dist_ctx.is_main
    ticket = state_dict_of(load_file(args.mask_dir, "--mask_dir checkpoint", args.trust_checkpoint), args.mask_dir)
    if not Mask.from_state_dict(ticket):
        raise UserError(f"--mask_dir '{args.mask_dir}' holds no masks (no '<layer>.weight_mask' entries)")
    check_compatible(model, plain_weights(ticket), f"--mask_dir '{args.mask_dir}'")
    load_weights(model, ticket)
    mask = Mask.from_model(model)
    start = start_weights(args, plain_weights(ticket))
    check_compatible(model, start, "the checkpoint to retrain from")
    if is_main:
        new_mask, layers = restructure(model, mask, data, args)
    else:
        new_mask, layers = mask, {}
    if dist_ctx is not None:  # computed once, on rank 0
        new_mask = dist_ctx.broadcast_mask(new_mask)
    spec = data.spec
    flops = masked_flops(model, (1, spec.in_channels, spec.image_size, spec.image_size),
                         {"unstructured": mask, script: new_mask})
    print(f"FLOPs per image (convolutions and classifier, scaled by mask density):\n{flops_report(flops)}")
    if is_main:
        prepare_save_dir(args.save_dir, needed_bytes=checkpoint_bytes(model))
    if dist_ctx is not None:
        dist_ctx.barrier()
    load_plain_weights(model, start)
    apply_mask(model, new_mask)
    print(f"ticket: {100 * mask.sparsity():.2f}% sparse -> {script}: {100 * new_mask.sparsity():.2f}% sparse")
    if resume is not None:
        if "state_dict" not in resume:
            raise UserError("--resume needs a run saved with --save_model (its checkpoint holds no weights)")
        load_weights(model, state_dict_of(resume))
    extra = {"init_weight": start, "source_mask": args.mask_dir, "args": vars(args)}
    result = train_state(model, data, args, device, state=0, resume=resume, extra=extra,
                         checkpoint_file=checkpoint_file, best_file=best_path(args.save_dir),
                         save_weights=args.save_model, dist_ctx=dist_ctx)
    record = state_record(0, new_mask, result)
    summary = {"script": script, "args": vars(args), "environment": environment(device),
               "ticket_sparsity": mask.sparsity(), "sparsity": new_mask.sparsity(), "layers": layers,
               "flops": {column: sum(row[column] for row in flops.values()) for column in next(iter(flops.values()))},
               "flops_per_layer": flops, "states": [record]}
    if is_main:
        write_summary(args.save_dir, summary)
        plot_states(args.save_dir, [record], f"{script} {args.arch} on {args.dataset}")
    if dist_ctx is not None:
        dist_ctx.barrier()
        dist_ctx.close()
    print(f"{script} done: sparsity {100 * record['sparsity']:.2f}% | best val {record['best_val_acc']:.2f}% "
          f"(epoch {record['best_epoch']}) | test at best val {record['test_acc_at_best_val']:.2f}%")
    return summary
