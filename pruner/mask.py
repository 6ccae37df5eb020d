"""The mask: layer name -> 0/1 float tensor shaped like that layer's weight.

Masks are first-class: sparsity accounting, save/load (as a plain dict or
from any checkpoint whose state dict holds `<layer>.weight_mask`), and
validation against a model before anything is applied.
"""
import torch
from torch import nn

from utils.checkpoint import load_file, save_atomic, state_dict_of
from utils.errors import InvalidInput

MASK_SUFFIX = ".weight_mask"


class Mask(dict):
    @classmethod
    def from_state_dict(cls, state_dict):
        return cls({k[: -len(MASK_SUFFIX)]: v.detach().clone().float()
                    for k, v in state_dict.items() if k.endswith(MASK_SUFFIX)})

    @classmethod
    def from_model(cls, model):
        return cls.from_state_dict(model.state_dict())

    @classmethod
    def load(cls, path, trust=False):
        """From a checkpoint (ours or the original code's) or a saved Mask;
        `trust` allows files that need more than plain types (see load_file)."""
        obj = load_file(path, "mask file", trust)
        if isinstance(obj, dict) and obj.get("kind") == "mask":
            return cls({k: v.float() for k, v in obj["masks"].items()})
        mask = cls.from_state_dict(state_dict_of(obj, path))
        if not mask:
            raise InvalidInput(f"'{path}' holds no masks (no '<layer>{MASK_SUFFIX}' entries in its state dict)")
        return mask

    def save(self, path):
        save_atomic({"kind": "mask", "masks": {k: v.to(torch.uint8) for k, v in self.items()}}, path)

    def kept(self):
        return int(sum(int(m.count_nonzero()) for m in self.values()))

    def total(self):
        return int(sum(m.numel() for m in self.values()))

    def density(self):
        return self.kept() / max(1, self.total())

    def sparsity(self):
        return 1.0 - self.density()

    def layer_density(self):
        return {name: float(m.count_nonzero()) / m.numel() for name, m in self.items()}

    def validate(self, model):
        """Raise InvalidInput unless every entry names a conv of `model` with a
        matching shape and holds only 0s and 1s."""
        modules = dict(model.named_modules())
        for name, m in self.items():
            module = modules.get(name)
            if not isinstance(module, nn.Conv2d):
                convs = [n for n, mod in modules.items() if isinstance(mod, nn.Conv2d)]
                raise InvalidInput(f"mask layer '{name}' is not a convolution of this model "
                                f"(its convolutions: {', '.join(convs[:4])}, ... {len(convs)} in all)")
            if tuple(m.shape) != tuple(module.weight.shape):
                raise InvalidInput(f"mask layer '{name}' has shape {tuple(m.shape)}, the model's weight is "
                                f"{tuple(module.weight.shape)}")
            if not torch.all((m == 0) | (m == 1)):
                raise InvalidInput(f"mask layer '{name}' holds values other than 0 and 1")

    def report(self):
        """Per-layer density lines, as printed after each pruning round."""
        width = max((len(n) for n in self), default=5)
        lines = [f"  {name:<{width}}  {tuple(m.shape)!s:<18} density {100 * d:6.2f}%"
                 for (name, m), d in zip(self.items(), self.layer_density().values())]
        lines.append(f"  {'total':<{width}}  {self.kept()}/{self.total()} weights kept, sparsity {100 * self.sparsity():.2f}%")
        return "\n".join(lines)
