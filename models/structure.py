"""What an architecture declares about itself for the code that restructures
it (slimming, the permuted regrouped model), so that code needs no
knowledge of model classes.

Two declarations, made by the modules that own the layers:

- `conv_chains()` on any module: (parent, producer, bn, consumer) attribute
  names under `parent` where the producer conv's output reaches only the
  consumer conv, through the BN `bn`, then ReLU (and possibly max-pool);
- `residual_depth` on a residual block: the block computes
  relu(bn_d(conv_d(... relu(bn1(conv1(x))) ...)) + shortcut(x)) with
  attributes conv1..conv_d, bn1..bn_d and `downsample` (None, the identity
  shortcut, or Sequential(conv, BN)).
"""


def conv_chains(model):
    """Every chain the model's modules declare, in module order."""
    chains = []
    for module in model.modules():
        declared = getattr(module, "conv_chains", None)
        if callable(declared):
            chains += declared()
    return chains


def residual_blocks(model):
    """(qualified name, block) of every module that declares `residual_depth`."""
    return [(name, module) for name, module in model.named_modules() if getattr(module, "residual_depth", 0)]
