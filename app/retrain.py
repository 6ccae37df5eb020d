"""Retraining one ticket, as a function: `retrain(cfg, restructure)`.

Loads the ticket (mask + trained weights from --mask_dir, rewind point from
--pretrained), restructures its mask with `restructure` (a RefillConfig or
RegroupConfig: anything with `name` and `apply(model, mask, data, train)`),
resets the weights, retrains with the shared loop and reports accuracy,
FLOPs and the per-layer restructuring in summary.json. `evaluate(cfg)`
only evaluates --checkpoint.
"""
import contextlib
import os
from dataclasses import dataclass

from app.distributed import launch_rank
from app.exports import rehearse_export
from app.lifecycle import open_run, owned_save_dir, resume_checkpoint
from app.report import environment, state_record
from app.training import amp_dtype, evaluate as accuracy, feed, feeding, loader_pool, train_state
from pruner.mask import Mask
from pruner.masking import apply_mask, check_compatible, load_plain_weights, load_weights
from utils.checkpoint import best_path, checkpoint_path, load_file, plain_weights, state_dict_of
from utils.errors import InvalidInput, StorageFull
from utils.flops import flops_report, masked_flops


@dataclass
class RetrainResult:
    save_dir: str
    summary: dict  # what summary.json holds (evaluate(): val_acc and test_acc only)


def start_weights(cfg, ticket_weights):
    """The weights retraining starts from (--prune-type)."""
    train = cfg.train
    if cfg.prune_type == "trained":
        return ticket_weights
    ckpt = load_file(train.pretrained, "--pretrained", train.trust_checkpoint)
    if cfg.prune_type in ("lt", "rewind_lt") and isinstance(ckpt, dict) and isinstance(ckpt.get("init_weight"), dict):
        return plain_weights(state_dict_of(ckpt["init_weight"], train.pretrained))
    return plain_weights(state_dict_of(ckpt, train.pretrained))


def evaluate(cfg):
    """Validation and test accuracy of the weights and masks in --checkpoint."""
    train = cfg.train
    run = open_run(train)
    ckpt = load_file(train.checkpoint, "--checkpoint", train.trust_checkpoint)
    if not (isinstance(ckpt, dict) and "state_dict" in ckpt):
        raise InvalidInput(f"--checkpoint '{train.checkpoint}' holds no weights (was the run saved with --save_model?)")
    weights = state_dict_of(ckpt, train.checkpoint)
    check_compatible(run.model, plain_weights(weights), f"--checkpoint '{train.checkpoint}'")
    load_weights(run.model, weights)
    mask = Mask.from_model(run.model)
    dtype = amp_dtype(train, run.device)
    pool = loader_pool(train, run.device, run.dist_ctx)
    val, test = (accuracy(run.model, feed(d, train, run.device, False, run.dist_ctx, pool), run.device, dtype,
                          run.dist_ctx) for d in (run.data.val, run.data.test))
    print(f"evaluate {train.checkpoint}: sparsity {100 * mask.sparsity():.2f}% | val {val:.2f}% | test {test:.2f}%")
    run.close()
    return RetrainResult(train.save_dir, {"val_acc": val, "test_acc": test})


def load_ticket(run, cfg):
    """Put the ticket (--mask_dir's weights and masks) into the run's model; its Mask."""
    train = cfg.train
    ticket = state_dict_of(load_file(cfg.mask_dir, "--mask_dir checkpoint", train.trust_checkpoint), cfg.mask_dir)
    if not Mask.from_state_dict(ticket):
        raise InvalidInput(f"--mask_dir '{cfg.mask_dir}' holds no masks (no '<layer>.weight_mask' entries)")
    check_compatible(run.model, plain_weights(ticket), f"--mask_dir '{cfg.mask_dir}'")
    load_weights(run.model, ticket)
    return Mask.from_model(run.model), plain_weights(ticket)


def retrain(cfg, restructure, export=None):
    """Restructure the ticket in `cfg.mask_dir` and retrain it, then `export(cfg)`
    (rank 0 alone), holding --save_dir throughout; returns a RetrainResult.
    With --evaluate, evaluates (and exports) --checkpoint instead."""
    if cfg.evaluate:
        result = evaluate(cfg)
        _export(cfg, export)
        return result
    with owned_save_dir(cfg.train), _how_to_continue(cfg):
        result = _retrain(cfg, restructure)
        _export(cfg, export)
    return result


def _export(cfg, export):
    if export is not None and launch_rank() == 0:  # one writer under torchrun
        export(cfg)


@contextlib.contextmanager
def _how_to_continue(cfg):
    """A run without --save_model cannot resume after a full disk: say what to do instead."""
    try:
        yield
    except StorageFull as err:
        if not cfg.save_model:
            err.hint = ("run it again after removing --save_dir (without --save_model its checkpoints hold no "
                        "weights to resume from)")
        raise


def _retrain(cfg, restructure):
    train = cfg.train
    checkpoint_file = checkpoint_path(train.save_dir)
    resume = resume_checkpoint(train, checkpoint_file if os.path.exists(checkpoint_file) else None,
                               os.path.basename(checkpoint_file))
    run = open_run(train)
    model, spec = run.model, run.data.spec
    mask, ticket_weights = load_ticket(run, cfg)
    start = start_weights(cfg, ticket_weights)
    if hasattr(restructure, "start_weights"):  # a control: random_reinit starts from fresh weights
        start = restructure.start_weights(start, train, spec)
    check_compatible(model, start, "the checkpoint to retrain from")
    new_mask, layers = run.shared_mask(lambda: restructure.apply(model, mask, run.data, train), fallback=(mask, {}))
    flops = masked_flops(model, (1, spec.in_channels, spec.image_size, spec.image_size),
                         {"unstructured": mask, restructure.name: new_mask})
    print(f"FLOPs per image (convolutions and classifier, scaled by mask density):\n{flops_report(flops)}")
    if run.is_main:  # the one writer of the exports rehearses them
        rehearse_export(cfg, restructure, model, new_mask, run.data.test)
    run.prepare_save_dir()
    load_plain_weights(model, start)
    apply_mask(model, new_mask)
    print(f"ticket: {100 * mask.sparsity():.2f}% sparse -> {restructure.name}: {100 * new_mask.sparsity():.2f}% sparse")
    if resume is not None:
        load_weights(model, state_dict_of(resume))
    flags = {**cfg.flags(), **restructure.flags()}  # what the run was given, as "args" has always held
    extra = {"init_weight": start, "source_mask": cfg.mask_dir, "args": flags}
    result = train_state(model, run.data, train, run.device, state=0, resume=resume, extra=extra,
                         checkpoint_file=checkpoint_file, best_file=best_path(train.save_dir),
                         save_weights=cfg.save_model, dist_ctx=run.dist_ctx)
    record = state_record(0, new_mask, result)
    summary = {"script": restructure.name, "args": flags, "environment": environment(run.device),
               "recipe": cfg.recipe_record(), "training": feeding(run.data, train, run.device, run.dist_ctx),
               "ticket_sparsity": mask.sparsity(), "sparsity": new_mask.sparsity(), "layers": layers,
               "flops": {column: sum(row[column] for row in flops.values()) for column in next(iter(flops.values()))},
               "flops_per_layer": flops, "states": [record]}
    run.write_results(summary, f"{restructure.name} {train.arch} on {train.dataset}")
    run.close()
    print(f"{restructure.name} done: sparsity {100 * record['sparsity']:.2f}% | best val {record['best_val_acc']:.2f}% "
          f"(epoch {record['best_epoch']}) | test at best val {record['test_acc_at_best_val']:.2f}%")
    return RetrainResult(train.save_dir, summary)
