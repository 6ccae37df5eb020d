"""Training recipes per dataset: what `--dataset NAME` alone trains with.

The paper's runs come from the original authors' code and README
(VITA-Group/Structure-LTH): its CIFAR-10 ResNet-18 command is the only
recipe its README gives (IMP with rewinding to epoch 16, 160 epochs, lr 0.1
dropped 10x at 80 and 120, weight decay 1e-4, batch 128), and its CIFAR
scripts train CIFAR-100 and Tiny-ImageNet with the same code, so they take
that recipe too; its ImageNet script's defaults are the ImageNet recipe (90
epochs, batch 1024, lr 0.4 with 5 warm-up epochs then 10x drops at 29, 59
and 79, weight decay 1e-4, rewind to epoch 15). digits keeps a quick recipe
of its own (15 epochs a state, a CPU-sized IMP run).

Every value is a flag's default: a flag given on the command line wins, and
summary.json records the recipe and each override (`RecipeChoice`).
"""
import textwrap
from dataclasses import dataclass

# (flag, what it sets) in the order --help and summaries list them
RECIPE_FLAGS = ("epochs", "lr", "decreasing_lr", "weight_decay", "batch_size", "warmup", "warmup_unit",
                "rewind_epoch", "prune_type", "pruning_times")

_CIFAR = {"epochs": 160, "lr": 0.1, "decreasing_lr": "80,120", "weight_decay": 1e-4, "batch_size": 128, "warmup": 0,
          "warmup_unit": "iteration", "rewind_epoch": 16, "prune_type": "rewind_lt", "pruning_times": 10}

RECIPES = {
    "digits": {"epochs": 15, "lr": 0.1, "decreasing_lr": None, "weight_decay": 5e-4, "batch_size": 128, "warmup": 0,
               "warmup_unit": "epoch", "rewind_epoch": 3, "prune_type": "lt", "pruning_times": 8},
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "tiny-imagenet": _CIFAR,
    "imagenet": {"epochs": 90, "lr": 0.4, "decreasing_lr": "29,59,79", "weight_decay": 1e-4, "batch_size": 1024,
                 "warmup": 5, "warmup_unit": "epoch", "rewind_epoch": 15, "prune_type": "rewind_lt",
                 "pruning_times": 15},
}

SOURCES = {
    "digits": "this tool's quick CPU recipe (not the paper's)",
    "cifar10": "the original README's CIFAR-10 ResNet-18 command",
    "cifar100": "the original README's CIFAR-10 command (the original code trains CIFAR-100 with the same scripts; "
                "its README gives no CIFAR-100 command)",
    "tiny-imagenet": "the original README's CIFAR-10 command (the original code trains Tiny-ImageNet with the same "
                     "scripts; its README gives no Tiny-ImageNet command)",
    "imagenet": "the original ImageNet script's defaults (main_imp_imagenet_DDP.py)",
}


def recipe(dataset):
    """{flag: value} of `dataset`'s recipe (digits' for a name without one)."""
    return dict(RECIPES.get(dataset, RECIPES["digits"]))


def recipe_help(name):
    """The end of a recipe flag's --help: its value in each recipe."""
    values = {}
    for dataset, values_of in RECIPES.items():
        value = values_of[name]
        values.setdefault("50%%,75%% of --epochs" if value is None else str(value), []).append(dataset)
    return "default: the dataset's recipe, " + "; ".join(f"{'/'.join(names)} {value}"
                                                         for value, names in values.items())


IMP_ONLY = ("rewind_epoch", "prune_type", "pruning_times")


def recipes_epilog():
    """--help's table of the recipes and where each comes from."""
    label = {flag: f"{flag} (IMP)" if flag in IMP_ONLY else flag for flag in RECIPE_FLAGS}
    width = max(len(v) for v in label.values())
    names = list(RECIPES)
    lines = ["training recipes (--dataset picks one; a flag given overrides its value; summary.json records both):",
             f"  {'':<{width}}  " + "  ".join(f"{n:>13}" for n in names)]
    for flag in RECIPE_FLAGS:
        shown = {n: "50%,75%" if RECIPES[n][flag] is None else str(RECIPES[n][flag]) for n in names}
        lines.append(f"  {label[flag]:<{width}}  " + "  ".join(f"{shown[n]:>13}" for n in names))
    lines.append("sources:")
    for n in names:
        lines += textwrap.wrap(f"{n}: {SOURCES[n]}", 100, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


@dataclass(frozen=True)
class RecipeChoice:
    """What a run took from its dataset's recipe and what its flags changed."""
    dataset: str
    given: tuple = ()  # recipe flags given on the command line

    def record(self, values):
        """summary.json's "recipe": the name, its source, its values, the
        overrides ({flag: value} of every recipe value the run did not train
        with, whether a flag, a script's preset or the Python API set it) and
        the recipe flags given on the command line."""
        base = recipe(self.dataset)
        return {"dataset": self.dataset, "source": SOURCES.get(self.dataset, SOURCES["digits"]), "values": base,
                "overrides": {name: values[name] for name in RECIPE_FLAGS
                              if name in values and values[name] != base[name]},
                "given": [name for name in self.given if name in values]}
