"""Find lottery tickets: iterative magnitude pruning (IMP) with rewinding.

State 0 trains the dense model; after each state, `--rate` of the remaining
convolution weights are pruned by global magnitude, the weights are rewound
(lt: initial weights; rewind_lt: weights after --rewind_epoch epochs of
state 0; pt: --pretrained) and the next state trains the masked model.
"""
import os
import sys

from pruner.magnitude import global_magnitude_prune
from pruner.refill import check_refill_args, criterion_names, format_refill_report, refill, refill_layers_report
from pruner.regroup import check_regroup_args, layer_summary, regroup_mask, report
from pruner.masking import apply_mask, check_compatible, current_mask, effective_weights, load_plain_weights, load_weights
from app.arguments import (add_general, add_regroup_args, add_round_to, add_ticket, add_training, checkpoint_bytes, finish,
                             parser_for, prepare_save_dir)
from app.distributed import mask_digest
from utils.checkpoint import (best_path, checkpoint_path, latest_checkpoint, load_file, plain_weights, save_atomic,
                              state_dict_of, summary_path)
from utils.errors import UserError, run_cli
from app.report import environment, plot_states, state_record, states_table, write_summary
from app.retrain import training_batch
from app.setup import build, resume_checkpoint
from app.training import train_state


def get_args_parser():
    parser = parser_for(__doc__.splitlines()[0])
    add_general(parser, save_dir="runs/imp")
    add_training(parser)
    add_ticket(parser)
    g = parser.add_argument_group("IMP")
    g.add_argument("--init", default=None, help="initial weights file: created when missing, reused when present")
    g.add_argument("--pruning_times", type=int, default=8, help="number of IMP states, dense state 0 included")
    g.add_argument("--rate", type=float, default=0.2, help="fraction of remaining weights pruned per state")
    g.add_argument("--prune_type", default="lt", choices=["lt", "pt", "rewind_lt"], help="where to rewind")
    g.add_argument("--rewind_epoch", type=int, default=3, help="rewind_lt: epochs of state 0 before the rewind point")
    g = parser.add_argument_group("IMP-Refill: refill the mask after every round")
    g.add_argument("--fillback", action="store_true", help="make each round's mask channel-wise (IMP-Refill)")
    g.add_argument("--criteria", default="magnitude", help=f"refill criterion, one of: {', '.join(criterion_names())}")
    g.add_argument("--fillback_rate", type=float, default=0.0, help="0 = refill, > 0 = refill+")
    parser.add_argument("--regroup", action="store_true", help="regroup each round's mask into dense blocks (IMP-Regroup)")
    add_round_to(add_regroup_args(parser))
    return parser


def check_imp_args(args):
    finish(args)
    if not 0.0 < args.rate < 1.0:
        raise UserError(f"--rate must be in (0, 1), got {args.rate}")
    if args.pruning_times < 1:
        raise UserError(f"--pruning_times must be at least 1, got {args.pruning_times}")
    if args.fillback:
        check_refill_args(args.criteria, args.fillback_rate, args.round_to)
    if args.regroup:
        check_regroup_args(args.t1, args.cn, args.nn, args.b2, args.regroup_unit, args.round_to)
    if args.round_to != 1 and not (args.fillback or args.regroup):
        raise UserError(f"--round_to {args.round_to} rounds what --fillback or --regroup keeps: add one of them")
    if args.fillback and args.regroup:
        raise UserError("--fillback and --regroup are two different post-processings: choose one")
    if args.prune_type == "pt" and not args.pretrained:
        raise UserError("--prune_type pt rewinds to --pretrained weights: give --pretrained <checkpoint>")
    if args.prune_type == "rewind_lt" and args.rewind_epoch < 0:
        raise UserError(f"--rewind_epoch must be at least 0, got {args.rewind_epoch}")
    if args.prune_type == "rewind_lt" and args.rewind_epoch >= args.epochs:
        # Short trial runs of long recipes (the README's --rewind_epoch 16 with a few epochs).
        print(f"--rewind_epoch {args.rewind_epoch} is not below --epochs {args.epochs}: "
              f"rewinding to the weights after {args.epochs - 1} epoch(s) instead")
        args.rewind_epoch = args.epochs - 1


def initial_weights(model, args, write=True):
    """Set the model's starting weights (--init / --pretrained) and return
    the rewind point as a plain CPU state dict."""
    if args.prune_type == "pt":
        ckpt = load_file(args.pretrained, "--pretrained", args.trust_checkpoint)
        load_plain_weights(model, plain_weights(state_dict_of(ckpt, args.pretrained)))
    elif args.init and os.path.exists(args.init):
        weights = state_dict_of(load_file(args.init, "--init file", args.trust_checkpoint), args.init)
        check_compatible(model, weights, f"--init file '{args.init}'", ": another architecture or dataset?")
        load_plain_weights(model, weights)
        print(f"initial weights loaded from {args.init}")
    elif args.init and write:
        os.makedirs(os.path.dirname(os.path.abspath(args.init)), exist_ok=True)
        save_atomic(effective_weights(model), args.init)
        print(f"initial weights saved to {args.init}")
    return {k: v.cpu() for k, v in effective_weights(model).items()}


def next_mask(model, data, args):
    """Prune the trained model by global magnitude, then post-process the
    mask (IMP-Refill / IMP-Regroup) before rewinding. Returns the mask and the
    per-layer reports for summary.json ({"next_refill": ..., "next_regroup": ...},
    empty for plain IMP)."""
    mask = global_magnitude_prune(model, args.rate, args.conv1)
    reports = {}
    if args.fillback:
        apply_mask(model, mask)  # activation criteria see the pruned network
        batch = training_batch(data, args) if args.criteria in ("l1", "l2", "saliency") else None
        refilled = refill(model, mask, args.criteria, args.fillback_rate, batch, args.round_to)
        reports["next_refill"] = refill_layers_report(mask, refilled, args.fillback_rate, args.round_to)
        print(f"refill ({args.criteria}, rate {args.fillback_rate}, round_to {args.round_to}):\n"
              f"{format_refill_report(reports['next_refill'])}")
        mask = refilled
    if args.regroup:
        mask, infos = regroup_mask(mask, args.t1, args.cn, args.nn, args.b2, args.seed, args.partitioner,
                                   args.regroup_unit, args.round_to)
        print(report(infos))
        reports["next_regroup"] = {name: layer_summary(info) for name, info in infos.items()}
    return mask, reports


def main(args):
    check_imp_args(args)
    existing = latest_checkpoint(args.save_dir)
    resume = resume_checkpoint(args, existing, os.path.basename(checkpoint_path("", "{i}"))) if args.resume else None
    if resume is None and existing:
        raise UserError(f"--save_dir '{args.save_dir}' already holds a run ({os.path.basename(existing)}); "
                        "pass --resume to continue it or choose another --save_dir")
    device, data, model, dist_ctx = build(args)
    is_main = dist_ctx is None or dist_ctx.is_main
    if is_main:
        prepare_save_dir(args.save_dir, needed_bytes=checkpoint_bytes(model))
    if dist_ctx is not None:
        dist_ctx.barrier()
    if args.fc:
        print("--fc: the classifier stays dense; only convolutions are pruned")

    if resume is not None:
        load_weights(model, state_dict_of(resume))
        start_state, history = resume["state"], list(resume.get("imp_history", []))[: resume["state"]]
        extra = {"init_weight": resume["init_weight"]}
    else:
        start_state, history = 0, []
        extra = {"init_weight": initial_weights(model, args, write=is_main)}
    summary = {"script": "main_imp.py", "args": vars(args), "environment": environment(device), "states": history}

    def capture_rewind_point(epoch):
        if args.prune_type == "rewind_lt" and epoch == args.rewind_epoch and state == 0:
            extra["init_weight"] = {k: v.cpu() for k, v in effective_weights(model).items()}

    for state in range(start_state, args.pruning_times):
        mask = current_mask(model, args.conv1)
        print(f"\n=== IMP state {state}/{args.pruning_times - 1}: conv sparsity {100 * mask.sparsity():.2f}% ===", flush=True)
        extra.update(imp_history=history, args=vars(args))
        this = resume if resume is not None and resume["state"] == state else None
        if this is not None and this["epoch"] >= args.epochs:
            result = this["result"]  # state finished before the interruption
        else:
            result = train_state(model, data, args, device, state=state, resume=this, extra=extra,
                                 checkpoint_file=checkpoint_path(args.save_dir, state),
                                 best_file=best_path(args.save_dir, state), on_epoch_start=capture_rewind_point,
                                 dist_ctx=dist_ctx)
        record = state_record(state, mask, result)
        history.append(record)
        print(f"state {state} done: sparsity {100 * record['sparsity']:.2f}% | best val {record['best_val_acc']:.2f}% "
              f"(epoch {record['best_epoch']}) | test at best val {record['test_acc_at_best_val']:.2f}%", flush=True)
        if is_main:
            write_summary(args.save_dir, summary)
            plot_states(args.save_dir, history, f"IMP {args.arch} on {args.dataset}")
        if state + 1 < args.pruning_times:
            new_mask, reports = next_mask(model, data, args) if is_main else (current_mask(model, args.conv1), {})
            if reports and is_main:  # kept with this state's record (checkpoints carry the history)
                record.update(reports)
                write_summary(args.save_dir, summary)
            if dist_ctx is not None:  # computed once, on rank 0; every rank takes that mask
                new_mask = dist_ctx.broadcast_mask(new_mask)
            load_plain_weights(model, extra["init_weight"])  # rewind, then mask
            apply_mask(model, new_mask)
            if dist_ctx is not None:  # what each rank now trains with, for the logs (and tests) to compare
                sys.stderr.write(f"rank {dist_ctx.rank}: state {state + 1} mask {mask_digest(current_mask(model, args.conv1))}\n")
            print(f"pruned to {100 * new_mask.sparsity():.2f}% sparsity, rewound ({args.prune_type}):\n{new_mask.report()}")

    print("\n" + states_table(history))
    print(f"summary: {summary_path(args.save_dir)}")
    if dist_ctx is not None:
        dist_ctx.barrier()
        dist_ctx.close()


if __name__ == "__main__":
    run_cli(main, get_args_parser())
