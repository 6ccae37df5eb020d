"""Configs whose fields are command-line flags: `flag(...)` declares a
dataclass field with its help and argparse options; `FlagConfig` gives the
dataclass `add_args` (generate the flags), `from_args` (build from parsed
flags), `flags` (what a run records as its "args") and `replace`. The
original code's spellings of our flags are one table, FLAG_ALIASES.
"""
import argparse
import dataclasses
from dataclasses import field, fields

from app.recipes import recipe, recipe_help, recipes_epilog
from utils.checkpoint import TRUST_HELP

# The original code's spellings of our flags.
FLAG_ALIASES = {
    "epochs": ("--epoch",),
    "prune_type": ("--prune-type",),
    "fillback_rate": ("--fillback-rate",),
    "criterion": ("--criteria",),
}


def flag(default, help, group, **argparse_options):
    """A config field that is also a command-line flag (--<field name>)."""
    return field(default=default, metadata={"help": help, "group": group, **argparse_options})


class FlagConfig:
    """add_args / from_args / flags for a dataclass whose fields are flags."""

    @classmethod
    def flag_fields(cls):
        return [f for f in fields(cls) if "help" in f.metadata]

    recipe_fields = ()  # flags whose default is the dataset's training recipe (app.recipes)

    @classmethod
    def add_args(cls, parser, skip=(), group=None, **defaults):
        """Add this config's flags to `parser` (grouped as declared, or all in
        the argument group `group`), but those named in `skip`; keyword
        arguments override defaults (a script's own --save_dir). A flag the
        parser already has (--round_to, shared by refill and regroup) is not
        added twice."""
        groups = {}
        for f in cls.flag_fields():
            names = [f"--{f.name}", *FLAG_ALIASES.get(f.name, ())]
            if f.name in skip or any(name in parser._option_string_actions for name in names):
                continue
            options = {k: v for k, v in f.metadata.items() if k not in ("group", "flags")}
            if "action" not in options and isinstance(f.default, bool):
                options["action"] = "store_false" if f.default else "store_true"
            names = list(f.metadata.get("flags", names))
            title = f.metadata["group"]
            target = group or groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
            default = defaults.get(f.name, f.default)
            if f.name in cls.recipe_fields and f.name not in defaults:  # absent unless given: from_args fills it
                default, options["help"] = argparse.SUPPRESS, f"{options['help']} ({recipe_help(f.name)})"
            target.add_argument(*names, dest=f.name, default=default, **options)
        return parser

    @classmethod
    def from_args(cls, args, **given):
        """The config of parsed flags; `given` fields (nested configs, values a
        script fixes) take precedence, a recipe flag not given takes the
        recipe of --dataset, any other flag the parser lacks keeps its default."""
        dataset_recipe = recipe(getattr(args, "dataset", "digits"))
        values = {f.name: getattr(args, f.name, dataset_recipe[f.name] if f.name in cls.recipe_fields else f.default)
                  for f in cls.flag_fields()}
        return cls(**{**values, **given})

    @classmethod
    def add_recipe_args(cls, parser):
        """Only this config's recipe flags (a script that builds its configs
        itself, as experiments/reproduce.py does, passes them through)."""
        skip = tuple(f.name for f in cls.flag_fields() if f.name not in cls.recipe_fields)
        return FlagConfig.add_args.__func__(cls, parser, skip)  # this config's own flags, not those it nests

    @classmethod
    def recipe_flags_given(cls, args):
        """The recipe flags of this config given on the command line."""
        return tuple(name for name in cls.recipe_fields if hasattr(args, name))

    def flags(self):
        """{flag: value} of this config and the configs inside it, as a run's
        summary and checkpoints record them ("args")."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FlagConfig):
                values.update(value.flags())
            elif "help" in f.metadata:
                values[f.name] = value
        return values

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def add_trust_flag(parser):
    """--trust_checkpoint, for every script that reads files (TrainConfig declares it for the entry scripts)."""
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in each flag's help; the epilog (the recipes' table) as written."""


def parser_for(description):
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, epilog=recipes_epilog())
