"""What a researcher looks at after a run: `summary.json` (machine-readable,
one entry per IMP state / run) and two plots — accuracy per epoch, and test
accuracy against sparsity across states."""
import json
import os
import platform

import torch

from utils.checkpoint import atomic_write, plot_paths, summary_path
from app.training import best_summary


def state_record(state, mask, result):
    """The summary entry of one trained state."""
    return {"state": state, "sparsity": mask.sparsity() if mask else 0.0,
            "remaining_weights": mask.density() if mask else 1.0,
            **best_summary(result),
            "layer_density": mask.layer_density() if mask else {},
            "epochs": result}


def environment(device):
    return {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads()}


def write_json(path, obj):
    """Write obj to path atomically: a run killed while writing leaves the previous file intact."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), binary=False)
    return path


def save_figure(fig, path, dpi=110):
    """fig as a PNG at `path`, written atomically like every other file of a run."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def write_summary(save_dir, summary):
    return write_json(summary_path(save_dir), summary)


def read_summary(save_dir):
    """A run's summary.json, or None when it has none yet."""
    path = summary_path(save_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def plot_states(save_dir, states, title):
    """accuracy_per_epoch.png and accuracy_vs_sparsity.png in save_dir."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in states:
        acc = rec["epochs"]["test_acc"]
        ax.plot(range(1, len(acc) + 1), acc, label=f"state {rec['state']} ({100 * rec['sparsity']:.1f}% sparse)")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{title}: test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    per_epoch, vs_sparsity = plot_paths(save_dir)
    try:
        save_figure(fig, per_epoch)
    finally:
        plt.close(fig)

    done = [r for r in states if r["test_acc_at_best_val"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([100 * r["sparsity"] for r in done], [r["test_acc_at_best_val"] for r in done], "o-", label="ticket")
    if done:
        ax.axhline(done[0]["test_acc_at_best_val"], color="gray", ls="--", label="state 0 (dense)")
    ax.set(xlabel="sparsity of pruned convolutions (%)", ylabel="test accuracy at best validation (%)",
           title=f"{title}: accuracy vs. sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        save_figure(fig, vs_sparsity)
    finally:
        plt.close(fig)


def states_table(states):
    lines = ["state  sparsity  best val  epoch  test@best val"]
    for r in states:
        lines.append(f"{r['state']:>5}  {100 * r['sparsity']:7.2f}%  {r['best_val_acc']:7.2f}%  {r['best_epoch']:>5}  "
                     f"{r['test_acc_at_best_val']:12.2f}%")
    return "\n".join(lines)
