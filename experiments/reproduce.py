"""Reproduce the paper's comparison on one dataset and architecture: IMP,
IMP-Refill, IMP-Refill+ and IMP-Regroup, refill / refill+ / regroup
retraining of every IMP ticket, and the two controls every ticket is judged
against (random pruning, random reinitialisation), over several seeds; then
accuracy, FLOPs and measured inference speedup per sparsity, in one JSON and
two figures.

    python experiments/reproduce.py --quick              # a few minutes on 2 CPU cores
    python experiments/reproduce.py --out runs/reproduce # digits' recipe: 8 states x 15 epochs, seeds 1 2

Training follows --dataset's recipe (app.recipes, as the entry scripts do);
its flags (--epochs --lr --decreasing_lr --weight_decay --batch_size
--warmup --warmup_unit --rewind_epoch --prune_type --pruning_times)
override it and pass through to every run.

Every run is a call of the API the entry scripts adapt (app.imp.run_imp,
app.retrain.retrain) on configs composed here, in-process, writing to
OUT/seed<s>/<method>[/state<i>]; its log goes to log.txt beside its
summary.json. Re-running with the same --out skips the
runs whose summary says they finished, resumes the ones that were cut off
(--resume), and refuses an --out made with other training settings. Speed
is measured again on every invocation, on the device the runs used.
"""
import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from app.config import (CONTROLS, ControlConfig, ImpConfig, RefillConfig, RegroupConfig, RetrainConfig,  # noqa: E402
                        TrainConfig)
from app.recipes import recipe  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from app.imp import run_imp  # noqa: E402
from app.retrain import retrain  # noqa: E402
from models import build_model, model_names  # noqa: E402
from kernels.regrouped import regroup_model  # noqa: E402
from pruner.mask import Mask  # noqa: E402
from pruner.masking import load_weights, strip_masks  # noqa: E402
from pruner.regroup import LayerRegroup, parts_for  # noqa: E402
from pruner.slim import slim  # noqa: E402
from utils.checkpoint import (best_path, checkpoint_path, latest_checkpoint, load_file, log_path, state_dict_of,  # noqa: E402
                              storage_errors_named)
from app.datasets import dataset_names, load_dataset  # noqa: E402
from utils.errors import InvalidInput, StorageFull, run_cli  # noqa: E402
from utils.run_lock import run_folder_lock  # noqa: E402
from utils.flops import masked_flops, model_flops  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from utils.timing import alternating_medians  # noqa: E402
from app.report import read_summary, save_figure, write_json  # noqa: E402
from utils.runtime import select_device  # noqa: E402

METHODS = ("imp", "imp_refill", "imp_refill_plus", "imp_regroup", "refill", "refill_plus", "regroup", "random_pruning",
           "random_reinit")
LABELS = {"imp": "IMP", "imp_refill": "IMP-Refill", "imp_refill_plus": "IMP-Refill+", "imp_regroup": "IMP-Regroup",
          "refill": "IMP + Refill", "refill_plus": "IMP + Refill+", "regroup": "IMP + Regroup",
          "random_pruning": "Random pruning", "random_reinit": "Random reinit"}
# How a method's tickets are timed: masked at dense speed, physically slimmed, or as regrouped blocks.
STRUCTURE = {"imp": "unstructured", "imp_refill": "channel", "imp_refill_plus": "channel", "imp_regroup": "blocks",
             "refill": "channel", "refill_plus": "channel", "regroup": "blocks", "random_pruning": "unstructured",
             "random_reinit": "unstructured"}
QUICK = {"pruning_times": 5, "epochs": 5, "bench_repeats": 5}
FULL = {"bench_repeats": 15}  # states, epochs and the rest: the dataset's training recipe (app.recipes)
RECIPE_KEYS = TrainConfig.recipe_fields + ImpConfig.recipe_fields
DEFINITIONS = {
    "sparsity": "share of the pruned convolutions' weights that are zero (stem and classifier excluded)",
    "remaining_weights_pct": "100 x (1 - sparsity)",
    "test_acc": "test accuracy (%) at the epoch of best validation accuracy",
    "std": "sample standard deviation over seeds (0 with one seed)",
    "dense": "IMP state 0 (the dense model) of each seed",
    "max_sparsity_within_dense_std": "the highest mean sparsity (over seeds) among a method's states whose mean test "
                                     "accuracy is at least dense mean - dense std (state 0, the dense model, "
                                     "counts for the IMP-* methods); null when no state qualifies",
    "speedup": "median forward time of the dense model / that of the ticket, same input batch and device",
    "flops_per_image": "FLOPs the timed model executes per image (torch.utils.flop_counter)",
    "ideal_flops_per_image": "dense FLOPs of each masked layer scaled by its mask density (an ideal sparse kernel)",
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits", help=f"one of: {', '.join(dataset_names())}")
    p.add_argument("--data", default="datasets", help="dataset location (unused for digits)")
    p.add_argument("--download", action="store_true", help="fetch cifar10/cifar100 into --data when its files are "
                                                             "missing (the official archive, md5-checked)")
    p.add_argument("--arch", default="res20s", help=f"one of: {', '.join(model_names())}")
    p.add_argument("--out", default="runs/reproduce", help="run folders, results.json and figures")
    add_trust_flag(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--gpu", type=int, default=None, help="CUDA device index (CPU when CUDA is absent)")
    p.add_argument("--quick", action="store_true",
                   help=f"short settings: {QUICK['pruning_times']} states x {QUICK['epochs']} epochs")
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"any of: {', '.join(METHODS)} (imp always runs: it gives the dense baseline and the tickets)")
    TrainConfig.add_recipe_args(p)  # --epochs --lr --decreasing_lr --weight_decay --batch_size --warmup ...
    ImpConfig.add_recipe_args(p)  # --rewind_epoch --prune_type --pruning_times
    p.add_argument("--rate", type=float, default=0.2, help="share of the remaining weights IMP prunes per state")
    p.add_argument("--fillback_rate", type=float, default=0.2, help="refill+ rate (refill uses 0)")
    # b2 4 (not 16) lets res20s's 64-channel layers form blocks; 16 suits wider networks.
    RegroupConfig.add_args(p, skip=("t1", "nn", "partitioner", "round_to"), b2=4)
    p.add_argument("--bench_batch", type=int, default=128, help="images per timed forward pass")
    p.add_argument("--bench_repeats", type=int, default=None,
                   help=f"timed forward passes per model, median reported (default {FULL['bench_repeats']}, "
                        f"--quick {QUICK['bench_repeats']})")
    return p


def check_args(args):
    """Fill the --quick / full defaults and reject bad input before any run starts."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise InvalidInput(f"unknown method '{unknown[0]}'; valid: {', '.join(METHODS)}")
    args.methods = [m for m in METHODS if m in args.methods or m == "imp"]
    args.seeds = list(dict.fromkeys(args.seeds))
    args.recipe_given = tuple(k for k in RECIPE_KEYS if hasattr(args, k))
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in recipe(args.dataset).items():  # what --dataset's recipe gives where no flag did
        if not hasattr(args, key):
            setattr(args, key, value)
    for key in ("epochs", "pruning_times", "bench_batch", "bench_repeats"):
        if getattr(args, key) < 1:
            raise InvalidInput(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.pruning_times < 2:
        raise InvalidInput("--pruning_times must be at least 2: the retraining methods start from IMP states >= 1")
    if not 0.0 < args.fillback_rate <= 1.0:
        raise InvalidInput(f"--fillback_rate (refill+) must be in (0, 1], got {args.fillback_rate}")
    # The configs every run is made of refuse bad values (dataset, arch, recipe, regroup settings) before any run.
    imp_config(args, train_config(args, args.seeds[0]), None)
    RegroupConfig.from_args(args)


def train_config(args, seed):
    """The TrainConfig of every run of one seed: --dataset's recipe, the recipe flags given overriding it."""
    return TrainConfig(dataset=args.dataset, data=args.data, arch=args.arch, seed=seed, gpu=args.gpu,
                       recipe_given=tuple(k for k in args.recipe_given if k in TrainConfig.recipe_fields),
                       **{k: getattr(args, k) for k in TrainConfig.recipe_fields})


def imp_config(args, train, post):
    return ImpConfig(train, rate=args.rate, refilling=post if isinstance(post, RefillConfig) else None,
                     regrouping=post if isinstance(post, RegroupConfig) else None,
                     recipe_given=tuple(k for k in args.recipe_given if k in ImpConfig.recipe_fields),
                     **{k: getattr(args, k) for k in ImpConfig.recipe_fields})


def training_config(args):
    """What the runs' results depend on: an --out made with other values is refused, not mixed."""
    keys = ("dataset", "arch", *RECIPE_KEYS, "rate", "fillback_rate", "b2", "cn", "regroup_unit")
    return {k: getattr(args, k) for k in keys}


def claim_out_dir(args):
    config = training_config(args)
    path = os.path.join(args.out, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        changed = [f"--{k} {earlier.get(k)} -> {v}" for k, v in config.items() if earlier.get(k) != v]
        if changed:
            raise InvalidInput(f"--out '{args.out}' holds runs made with other settings ({', '.join(changed)}); "
                            "choose another --out or repeat the earlier settings to resume")
    write_json(path, config)


# ---- running the API ------------------------------------------------------------------------------------------

def run_logged(run, save_dir, finished, what):
    """run(resume) unless save_dir's summary already says `finished`; a run
    with checkpoints but no finished summary resumes. Its stdout goes to
    save_dir/log.txt. Returns the summary."""
    summary = read_summary(save_dir)
    if summary is not None and finished(summary):
        print(f"  {what}: finished earlier, skipped", flush=True)
        return summary
    cut_off = bool(latest_checkpoint(save_dir) or os.path.exists(checkpoint_path(save_dir)))
    os.makedirs(save_dir, exist_ok=True)
    tic = time.perf_counter()
    with storage_errors_named(log_path(save_dir)), open(log_path(save_dir), "a") as log, \
            contextlib.redirect_stdout(log):
        run(cut_off)
    print(f"  {what}: {'resumed and ' if cut_off else ''}done in {time.perf_counter() - tic:.1f} s", flush=True)
    return read_summary(save_dir)


def post_processing(method, seed, args):
    """The RefillConfig / RegroupConfig a method applies to a mask (None for plain IMP)."""
    if method in ("imp_refill", "refill"):
        return RefillConfig(criterion="magnitude", fillback_rate=0.0)
    if method in ("imp_refill_plus", "refill_plus"):
        return RefillConfig(criterion="magnitude", fillback_rate=args.fillback_rate)
    if method in ("imp_regroup", "regroup"):
        return RegroupConfig(b2=args.b2, cn=args.cn, regroup_unit=args.regroup_unit, seed=seed)
    if method in CONTROLS:
        return ControlConfig(control=method, seed=seed)
    return None


def run_seed(seed, args):
    """Train every method for one seed; returns {method: [(state, summary record, best checkpoint)]}."""
    train = train_config(args, seed)
    root = os.path.join(args.out, f"seed{seed}")
    states = {}
    for method in (m for m in args.methods if m.startswith("imp")):
        save_dir = os.path.join(root, method)
        post = post_processing(method, seed, args)
        cfg = imp_config(args, train.replace(save_dir=save_dir), post)
        summary = run_logged(lambda resume: run_imp(cfg.replace(train=cfg.train.replace(resume=resume))), save_dir,
                             lambda s: len(s["states"]) == args.pruning_times, f"seed {seed} {LABELS[method]}")
        states[method] = [(r["state"], r, best_path(save_dir, r["state"])) for r in summary["states"]]
    imp_dir = os.path.join(root, "imp")
    for method in (m for m in args.methods if not m.startswith("imp")):
        post = post_processing(method, seed, args)
        states[method] = []
        for state in range(1, args.pruning_times):
            ticket = checkpoint_path(imp_dir, state)  # the trained state-i weights IMP pruned from, and its rewind point
            save_dir = os.path.join(root, method, f"state{state}")

            def run(resume, ticket=ticket, save_dir=save_dir):
                cfg = RetrainConfig(train.replace(save_dir=save_dir, pretrained=ticket, resume=resume),
                                    mask_dir=ticket, prune_type="lt", save_model=True)
                retrain(cfg, post)
            summary = run_logged(run, save_dir, lambda s: True,  # written once, when the run ends
                                 f"seed {seed} {LABELS[method]} state {state}")
            states[method].append((state, summary["states"][0], best_path(save_dir)))
    return states


# ---- speed and FLOPs of one ticket ----------------------------------------------------------------------------

def ticket_model(path, args, spec):
    model = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, spec.imagenet_stem)
    load_weights(model, state_dict_of(load_file(path, "checkpoint", args.trust_checkpoint), path))
    return model.eval()


def blocks_from_mask(layer_mask, unit, cn, b2):
    """A regrouped layer's blocks, read back from its mask: regroup gives all
    rows of a part the same columns, so rows with one nonzero pattern form one
    dense block. More patterns than regroup makes parts means it kept the mask."""
    c_out = layer_mask.shape[0]
    if unit == "channel":
        grid = layer_mask.reshape(c_out, layer_mask.shape[1], -1).amax(2)
        if not torch.equal(layer_mask != 0, (grid != 0)[:, :, None, None].expand_as(layer_mask)):
            return LayerRegroup(kept_mask=True)  # not whole input channels: regroup kept the weight-level mask
    else:
        grid = layer_mask.reshape(c_out, -1)
    patterns, row_pattern = torch.unique(grid != 0, dim=0, return_inverse=True)
    blocks = [(torch.nonzero(row_pattern == p).flatten(), torch.nonzero(patterns[p]).flatten())
              for p in range(len(patterns)) if patterns[p].any()]
    most = parts_for(c_out, cn, b2)  # the most parts regroup makes of the layer's rows
    return LayerRegroup(kept_mask=True) if len(blocks) > most else LayerRegroup(blocks=blocks)


@torch.no_grad()
def structured_model(masked, path, structure, args, x):
    """(model to time, how it runs) for the ticket `masked` (loaded from
    `path`); slimmed and regrouped models are checked against it."""
    mask = Mask.from_model(masked)
    if not mask:
        return masked, "dense"
    if structure == "unstructured":  # zeros in dense weights: what an unstructured ticket runs as
        return strip_masks(copy.deepcopy(masked)), "dense kernels, zeroed weights"
    if structure == "channel":
        model, how = slim(masked), "slimmed"
    else:
        infos = {name: blocks_from_mask(m, args.regroup_unit, args.cn, args.b2) for name, m in mask.items()}
        # As profile/end_to_end.py does: on the CPU a layer keeps its dense convolution where blocks time slower.
        model, choice = regroup_model(copy.deepcopy(masked), infos, args.regroup_unit,
                                      x if x.device.type == "cpu" else None, repeats=args.bench_repeats)
        strip_masks(model)  # layers left without blocks run as plain convolutions on their zeroed weights
        counts = {kind: sum(c == kind for c in choice.values()) for kind in ("regrouped", "dense (faster)", "no block")}
        how = "regrouped (layers: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + ")"
    diff = (model(x.cpu()) - masked(x.cpu())).abs().max().item()
    if diff > 1e-3:
        raise InvalidInput(f"{path}: the {how} model differs from the masked ticket by {diff:.2e}")
    return model, how


@torch.no_grad()
def measure(path, structure, args, spec, device, dense):
    """Speed and FLOPs of one ticket against the dense model."""
    x = torch.rand((args.bench_batch, spec.in_channels, spec.image_size, spec.image_size),
                   generator=torch.Generator().manual_seed(0)).to(device)
    one = (1, spec.in_channels, spec.image_size, spec.image_size)
    masked = ticket_model(path, args, spec)
    ideal = sum(row["m"] for row in masked_flops(masked, one, {"m": Mask.from_model(masked)}).values())
    model, how = structured_model(masked, path, structure, args, x)
    flops = model_flops(model.cpu(), one)
    model.to(device)
    medians = alternating_medians({"dense": lambda: dense(x), "ticket": lambda: model(x)}, device, args.bench_repeats)
    dense_s, ticket_s = medians["dense"], medians["ticket"]
    return {"timed_as": how, "dense_ms": 1e3 * dense_s, "ms": 1e3 * ticket_s, "speedup": dense_s / ticket_s,
            "flops_per_image": flops, "ideal_flops_per_image": ideal}


def state_entry(state, record, best_checkpoint, measured, out):
    return {"state": state, "sparsity": record["sparsity"], "remaining_weights_pct": 100 * (1 - record["sparsity"]),
            "best_val_acc": record["best_val_acc"], "best_epoch": record["best_epoch"],
            "test_acc": record["test_acc_at_best_val"], **measured,
            "checkpoint": os.path.relpath(best_checkpoint, out)}


# ---- aggregation, figures, table --------------------------------------------------------------------------------

def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(per_seed, dense_mean, dense_std):
    """Per state: mean and std over seeds; and the highest sparsity within one dense std."""
    by_state = {}
    for records in per_seed.values():
        for r in records:
            by_state.setdefault(r["state"], []).append(r)
    rows = []
    for state, recs in sorted(by_state.items()):
        row = {"state": state, "seeds": len(recs)}
        for key in ("sparsity", "remaining_weights_pct", "test_acc", "speedup", "flops_per_image"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in recs])
        rows.append(row)
    within = [r["sparsity_mean"] for r in rows if r["test_acc_mean"] >= dense_mean - dense_std]
    return rows, (max(within) if within else None)


def draw(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    dense = results["dense"]
    # Ticks at IMP's schedule, 100 x (1 - rate)^k, continued to the sparsest ticket any method reached.
    sparsest = min(r["remaining_weights_pct_mean"] for e in results["methods"].values() for r in e["states"])
    ticks = [100.0]
    while ticks[-1] > sparsest * 1.05:
        ticks.append(ticks[-1] * (1 - results["config"]["rate"]))
    title = f"{results['config']['arch']} on {results['config']['dataset']}, {len(results['config']['seeds'])} seed(s)"
    for key, ylabel, name in (("test_acc", "test accuracy at best validation (%)", "accuracy_vs_sparsity.png"),
                              ("speedup", "measured inference speedup vs dense (x)", "speedup_vs_sparsity.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        if key == "test_acc":
            ax.axhspan(dense["test_acc_mean"] - dense["test_acc_std"], dense["test_acc_mean"] + dense["test_acc_std"],
                       color="gray", alpha=0.2, lw=0)
            ax.axhline(dense["test_acc_mean"], color="gray", ls="--", label="dense (mean ± std)")
        else:
            ax.axhline(1.0, color="gray", ls="--", label="dense speed")
        for method, entry in results["methods"].items():
            rows = entry["states"]
            xs = [r["remaining_weights_pct_mean"] for r in rows]
            mean = [r[f"{key}_mean"] for r in rows]
            std = [r[f"{key}_std"] for r in rows]
            style = "-" if method.startswith("imp") else "--"
            ax.errorbar(xs, mean, yerr=std, fmt="o" + style, ms=4, capsize=3, label=entry["label"])
        ax.set_xscale("log")
        ax.invert_xaxis()  # sparser to the right, as in the paper
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="remaining weights (%)", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        try:
            save_figure(fig, os.path.join(out, name), dpi=120)
        finally:
            plt.close(fig)


def table(results):
    dense = results["dense"]
    lines = [f"dense: test {dense['test_acc_mean']:.2f} ± {dense['test_acc_std']:.2f}% over seeds "
             f"{results['config']['seeds']}",
             f"{'method':<15} {'state':>5} {'remaining':>9} {'test acc':>15} {'speedup':>13} {'MFLOPs/img':>10}"]
    for entry in results["methods"].values():
        for r in entry["states"]:
            lines.append(f"{entry['label']:<15} {r['state']:>5} {r['remaining_weights_pct_mean']:8.2f}% "
                         f"{r['test_acc_mean']:7.2f} ± {r['test_acc_std']:4.2f}% {r['speedup_mean']:6.2f} ± "
                         f"{r['speedup_std']:4.2f}x {r['flops_per_image_mean'] / 1e6:10.2f}")
    lines.append("highest sparsity with mean test accuracy within one std of dense:")
    for entry in results["methods"].values():
        best = entry["max_sparsity_within_dense_std"]
        lines.append(f"  {entry['label']:<15} {'none' if best is None else f'{100 * best:.2f}%'}")
    return "\n".join(lines)


def main(args):
    check_args(args)
    with run_folder_lock(args.out, "--out"):
        try:
            return run_all(args)
        except StorageFull as err:
            err.hint = "run the same command again: finished runs are kept and the one cut off resumes"
            raise


def run_all(args):
    claim_out_dir(args)
    tic = time.perf_counter()
    per_method = {m: {} for m in args.methods}
    device = select_device(args.gpu)
    spec = load_dataset(args.dataset, args.data, download=args.download).spec
    dense = build_model(args.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std,
                        spec.imagenet_stem).eval().to(device)
    for seed in args.seeds:
        print(f"seed {seed}: training ({args.pruning_times} IMP states x {args.epochs} epochs per run)", flush=True)
        trained = run_seed(seed, args)
        print(f"seed {seed}: timing and FLOPs of {sum(len(v) for v in trained.values())} tickets", flush=True)
        for method, states in trained.items():
            per_method[method][str(seed)] = [
                state_entry(state, record, ckpt, measure(ckpt, STRUCTURE[method], args, spec, device, dense), args.out)
                for state, record, ckpt in states]
    dense_accs = {seed: records[0]["test_acc"] for seed, records in per_method["imp"].items()}
    dense_mean, dense_std = mean_std(list(dense_accs.values()))
    methods = {}
    for method, per_seed in per_method.items():
        rows, within = aggregate(per_seed, dense_mean, dense_std)
        methods[method] = {"label": LABELS[method], "structure": STRUCTURE[method], "states": rows,
                           "max_sparsity_within_dense_std": within, "seeds": per_seed}
    results = {
        "config": {**training_config(args), "seeds": args.seeds, "methods": args.methods, "quick": args.quick,
                   "refill_criterion": "magnitude", "bench_batch": args.bench_batch,
                   "bench_repeats": args.bench_repeats},
        "environment": environment_line(device),
        "definitions": DEFINITIONS,
        "dense": {"test_acc_per_seed": dense_accs, "test_acc_mean": dense_mean, "test_acc_std": dense_std,
                  "flops_per_image": model_flops(dense.cpu(), (1, spec.in_channels, spec.image_size, spec.image_size))},
        "methods": methods,
        "seconds": time.perf_counter() - tic,
    }
    path = os.path.join(args.out, "results.json")
    write_json(path, results)
    draw(results, args.out)
    print("\n" + environment_line(device))
    print(table(results))
    print(f"results: {path} | figures: accuracy_vs_sparsity.png, "
          f"speedup_vs_sparsity.png | {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
