"""Iterative magnitude pruning with rewinding, as a function: `run_imp(cfg)`.

State 0 trains the dense model; after each state `cfg.rate` of the
remaining convolution weights are pruned by global magnitude, the mask is
optionally refilled or regrouped (IMP-Refill / IMP-Regroup), the weights are
rewound (lt: initial weights; rewind_lt: weights after `rewind_epoch` epochs
of state 0; pt: the --pretrained weights) and the next state trains the
masked model. Checkpoints `<i>checkpoint.pth.tar` / `<i>model_SA_best.pth.tar`
per state, summary.json and a plot in the save folder; resumable.
"""
import os
from dataclasses import dataclass

from app.lifecycle import open_run, owned_save_dir, resume_checkpoint
from app.report import environment, state_record, states_table
from app.training import feeding, train_state
from pruner.magnitude import global_magnitude_prune
from pruner.masking import apply_mask, check_compatible, current_mask, effective_weights, load_plain_weights, load_weights
from utils.checkpoint import (best_path, checkpoint_path, latest_checkpoint, load_file, plain_weights, save_atomic,
                              state_dict_of, summary_path)


@dataclass
class ImpResult:
    save_dir: str
    summary: dict  # what summary.json holds: args, environment, one record per state

    @property
    def states(self):
        return self.summary["states"]


def initial_weights(model, cfg, write=True):
    """Set the model's starting weights (--init / --pretrained) and return
    the rewind point as a plain CPU state dict."""
    train = cfg.train
    if cfg.prune_type == "pt":
        ckpt = load_file(train.pretrained, "--pretrained", train.trust_checkpoint)
        load_plain_weights(model, plain_weights(state_dict_of(ckpt, train.pretrained)))
    elif cfg.init and os.path.exists(cfg.init):
        weights = state_dict_of(load_file(cfg.init, "--init file", train.trust_checkpoint), cfg.init)
        check_compatible(model, weights, f"--init file '{cfg.init}'", ": another architecture or dataset?")
        load_plain_weights(model, weights)
        print(f"initial weights loaded from {cfg.init}")
    elif cfg.init and write:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.init)), exist_ok=True)
        save_atomic(effective_weights(model), cfg.init)
        print(f"initial weights saved to {cfg.init}")
    return {k: v.cpu() for k, v in effective_weights(model).items()}


def next_mask(model, data, cfg):
    """Prune the trained model by global magnitude, then post-process the
    mask (IMP-Refill / IMP-Regroup) before rewinding. Returns the mask and the
    per-layer reports for summary.json ({"next_refill": ...} or
    {"next_regroup": ...}, empty for plain IMP)."""
    mask = global_magnitude_prune(model, cfg.rate, cfg.train.conv1)
    post = cfg.post_processing
    if post is None:
        return mask, {}
    apply_mask(model, mask)  # activation criteria see the pruned network
    new_mask, layers = post.apply(model, mask, data, cfg.train)
    return new_mask, {"next_refill" if cfg.refilling is not None else "next_regroup": layers}


def run_imp(cfg):
    """Run (or resume) IMP as `cfg` says, holding --save_dir; returns an ImpResult."""
    with owned_save_dir(cfg.train):
        return _run_imp(cfg)


def _run_imp(cfg):
    train = cfg.train
    resume = resume_checkpoint(train, latest_checkpoint(train.save_dir), os.path.basename(checkpoint_path("", "{i}")))
    run = open_run(train)
    model = run.model
    run.prepare_save_dir(states=cfg.pruning_times - (resume["state"] if resume is not None else 0))
    if train.fc:
        print("--fc: the classifier stays dense; only convolutions are pruned")
    if resume is not None:
        load_weights(model, state_dict_of(resume))
        start_state, history = resume["state"], list(resume.get("imp_history", []))[: resume["state"]]
        extra = {"init_weight": resume["init_weight"]}
    else:
        start_state, history = 0, []
        extra = {"init_weight": initial_weights(model, cfg, write=run.is_main)}
    summary = {"script": "main_imp.py", "args": cfg.flags(), "environment": environment(run.device),
               "recipe": cfg.recipe_record(), "training": feeding(run.data, train, run.device, run.dist_ctx),
               "states": history}
    state = start_state

    def capture_rewind_point(epoch):
        if cfg.prune_type == "rewind_lt" and epoch == cfg.rewind_epoch and state == 0:
            extra["init_weight"] = {k: v.cpu() for k, v in effective_weights(model).items()}

    for state in range(start_state, cfg.pruning_times):
        mask = current_mask(model, train.conv1)
        print(f"\n=== IMP state {state}/{cfg.pruning_times - 1}: conv sparsity {100 * mask.sparsity():.2f}% ===", flush=True)
        extra.update(imp_history=history, args=cfg.flags())
        this = resume if resume is not None and resume["state"] == state else None
        if this is not None and this["epoch"] >= train.epochs:
            result = this["result"]  # state finished before the interruption
        else:
            result = train_state(model, run.data, train, run.device, state=state, resume=this, extra=extra,
                                 checkpoint_file=checkpoint_path(train.save_dir, state),
                                 best_file=best_path(train.save_dir, state), on_epoch_start=capture_rewind_point,
                                 dist_ctx=run.dist_ctx)
        record = state_record(state, mask, result)
        history.append(record)
        print(f"state {state} done: sparsity {100 * record['sparsity']:.2f}% | best val {record['best_val_acc']:.2f}% "
              f"(epoch {record['best_epoch']}) | test at best val {record['test_acc_at_best_val']:.2f}%", flush=True)
        run.write_results(summary, f"IMP {train.arch} on {train.dataset}")
        if state + 1 < cfg.pruning_times:
            new_mask, reports = run.shared_mask(lambda: next_mask(model, run.data, cfg),
                                                fallback=(current_mask(model, train.conv1), {}))
            if reports and run.is_main:  # kept with this state's record (checkpoints carry the history)
                record.update(reports)
                run.write_results(summary, f"IMP {train.arch} on {train.dataset}")
            load_plain_weights(model, extra["init_weight"])  # rewind, then mask
            apply_mask(model, new_mask)
            run.log_mask(f"state {state + 1}", current_mask(model, train.conv1))
            print(f"pruned to {100 * new_mask.sparsity():.2f}% sparsity, rewound ({cfg.prune_type}):\n{new_mask.report()}")

    print("\n" + states_table(history))
    print(f"summary: {summary_path(train.save_dir)}")
    run.close()
    return ImpResult(train.save_dir, summary)
