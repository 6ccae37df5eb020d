"""Is a ticket faster here? Whole-network inference of a ticket's forms
against the dense model at several batch sizes: a table, a picture (--plot)
and every row as JSON (--out).

    python profile/end_to_end.py --arch res18 --sparsity 0.8 0.9 --batch_size 1 8 64 256 --plot speedup.png --out speedup.json
    python profile/end_to_end.py runs/res18_imp/5checkpoint.pth.tar --arch res18 --batch_size 64 --image_size 32
    python profile/end_to_end.py TICKET --batch_size 1 64 256 --dtype bf16 --cuda_graphs        # on a GPU

The ticket is a checkpoint with masks, or, without one, one seeded global
magnitude step at each --sparsity on --arch's initial weights (BatchNorm as
after training), so the picture needs no trained run. Its forms (bench.network):
- dense (the reference) and dense with BatchNorm folded (its inference form);
- masked (unstructured): the ticket as masks on dense convolutions;
- slimmed refill: refilled by magnitude, channels cut out, BatchNorm folded;
  with --round_to N also each layer's kept channels rounded up to N;
- regrouped: with --regroup_unit channel on the CPU the permuted grouped
  convolutions (kernels.permuted, BatchNorm folded, each layer dense where
  that times faster), on a GPU the regrouped kernel (--kernel, each layer on
  cuDNN where that is faster) and the permuted form on cuDNN's grouped
  convolutions; with --regroup_unit weight, RegroupedConv2d layers.
Every form is checked against the model it implements before anything is
timed, in each --runtime (PyTorch eager, torch.compile, ONNX Runtime) and in
--dtype (on the CPU fp32, or bf16 where the CPU computes it natively). The
speedup is over the dense model in the same BatchNorm form (folded forms
over the folded dense model), in the same runtime, dtype and layout; the
FLOPs ratio is the dense FLOPs over those the form executes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from app.config import RegroupConfig  # noqa: E402
from app.flags import add_trust_flag  # noqa: E402
from app.report import write_json  # noqa: E402
from bench.gpu import PRECISIONS, precision_line, versions, versions_line  # noqa: E402
from bench.layer import environment_line  # noqa: E402
from bench.network import (RUNTIMES, Form, check_dtype, dense_forms, dense_of, generated_ticket, ideal_flops,  # noqa: E402
                           json_rows, measure, plot_speedups, refill_form, regroup_form, table)
from models import build_model, model_names  # noqa: E402
from pruner.mask import Mask  # noqa: E402
from pruner.masking import load_weights  # noqa: E402
from pruner.refill import check_round_to  # noqa: E402
from utils.checkpoint import load_file, plain_weights, state_dict_of  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402
from utils.runtime import select_device  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a ticket: a checkpoint with masks (main_imp.py's {i}checkpoint.pth.tar); without one, "
                        "tickets are generated at each --sparsity")
    p.add_argument("--arch", default=None, help="default: the checkpoint's, else res18")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.8],
                   help="without a checkpoint: the sparsities of the generated tickets")
    p.add_argument("--num_classes", type=int, default=None, help="default: the checkpoint's classifier, else 10")
    p.add_argument("--in_channels", type=int, default=None, help="default: the checkpoint's stem, else 3")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, nargs="+", default=[64], help="one or several batch sizes")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per form (default: 50 on a GPU, 10 on the CPU)")
    p.add_argument("--runtime", nargs="+", default=["torch"], metavar="|".join(RUNTIMES),
                   help="PyTorch eager, torch.compile (inductor) or ONNX Runtime (CPU, fp32); several run side by side")
    p.add_argument("--dtype", default=None, help=f"fp32 or bf16 on the CPU (bf16 only where the CPU computes it "
                                                 f"natively); on a GPU one of {', '.join(PRECISIONS)} (default tf32)")
    # The channel unit by default: its form runs fast without a GPU (kernels.permuted) and exports to ONNX.
    RegroupConfig.add_args(p, regroup_unit="channel")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw speedup against batch size here")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write every row here")
    p.add_argument("--gpu", type=int, default=None)
    add_trust_flag(p)
    g = p.add_argument_group("GPU")
    g.add_argument("--kernel", default="triton", choices=["triton", "cuda"], help="the regrouped kernel on a GPU")
    g.add_argument("--cuda_graphs", action="store_true", help="time every eager model as CUDA-graph replays")
    g.add_argument("--compile_mode", default=None, help="torch.compile's mode (default: reduce-overhead on a GPU)")
    return p


def ticket_model(args):
    """(masked model of --checkpoint, its input channels)."""
    ckpt = load_file(args.checkpoint, "checkpoint", args.trust_checkpoint)
    state_dict = state_dict_of(ckpt, args.checkpoint)
    if not Mask.from_state_dict(state_dict):
        raise InvalidInput(f"'{args.checkpoint}' holds no masks: give a ticket (an IMP checkpoint)")
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    arch = args.arch or saved.get("arch")
    if arch is None:
        raise InvalidInput(f"'{args.checkpoint}' does not name its architecture: pass --arch")
    plain = plain_weights(state_dict)
    classifier = [v for k, v in plain.items() if k.endswith(("fc.weight", "classifier.weight"))]
    num_classes = args.num_classes or (classifier[0].shape[0] if classifier else 10)
    in_channels = args.in_channels or plain["normalize.mean"].numel()
    model = build_model(arch, num_classes, in_channels)
    load_weights(model, state_dict)
    return model.eval(), in_channels


def tickets(args):
    """[(label, dense, masked, Mask)] and the input channels."""
    if args.checkpoint:
        masked, in_channels = ticket_model(args)
        mask = Mask.from_model(masked)
        label = f"{os.path.basename(args.checkpoint)} ({100 * mask.sparsity():.0f}% sparse)"
        return [(label, dense_of(masked), masked, mask)], in_channels
    arch = args.arch or "res18"
    if arch not in model_names():
        raise InvalidInput(f"unknown --arch '{arch}'; valid: {', '.join(model_names())}")
    for sparsity in args.sparsity:
        if not 0 < sparsity < 1:
            raise InvalidInput(f"--sparsity values must lie strictly between 0 and 1, got {sparsity}")
    in_channels = args.in_channels or 3
    made = [(f"{arch} {100 * s:g}% sparse", *generated_ticket(arch, s, args.num_classes or 10, in_channels))
            for s in args.sparsity]
    return made, in_channels


def ticket_forms(args, dense, masked, mask, image_shape, device, dtype):
    """{name: Form} of one ticket (the module docstring's list)."""
    forms = dense_forms(dense)
    forms["masked (unstructured)"] = Form(masked, "dense", ideal_flops=ideal_flops(masked, image_shape, mask))
    forms["slimmed refill"], refill_mask = refill_form(masked, mask)
    if args.round_to > 1:
        forms[f"slimmed refill, round {args.round_to}"], _ = refill_form(masked, mask, args.round_to)
    regroup = RegroupConfig.from_args(args, seed=0, round_to=1)
    example = torch.rand(max(args.batch_size), *image_shape, generator=torch.Generator().manual_seed(1))
    repeats = args.repeats or (50 if device.type == "cuda" else 10)
    if device.type == "cuda":
        from bench.gpu import DTYPES
        forms[f"regrouped ({args.regroup_unit}, {args.kernel})"], regrouped_mask, _ = regroup_form(
            masked, mask, regroup, "kernel", image_shape, example.to(device), repeats, args.kernel, DTYPES[dtype])
        if args.regroup_unit == "channel":
            forms["permuted (cuDNN grouped)"], _, _ = regroup_form(masked, mask, regroup, "permuted", image_shape)
    elif args.regroup_unit == "channel":
        forms["regrouped (channel)"], regrouped_mask, _ = regroup_form(masked, mask, regroup, "permuted", image_shape,
                                                                        example, repeats)
    else:
        forms["regrouped (weight)"], regrouped_mask, _ = regroup_form(masked, mask, regroup, "kernel", image_shape,
                                                                       example, repeats)
    return forms, refill_mask, regrouped_mask


def check_args(args):
    if min(args.batch_size) < 1 or args.image_size < 1:
        raise InvalidInput(f"batch sizes and --image_size must be at least 1, got {args.batch_size} / {args.image_size}")
    if args.repeats is not None and args.repeats < 1:
        raise InvalidInput(f"--repeats must be at least 1, got {args.repeats}")
    check_round_to(args.round_to)
    for runtime in args.runtime:
        if runtime not in RUNTIMES:
            raise InvalidInput(f"unknown --runtime '{runtime}'; valid: {', '.join(RUNTIMES)}")
    for path, what in ((args.plot, "--plot"), (args.out, "--out")):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise InvalidInput(f"{what} '{path}': its folder does not exist or cannot be written")


@torch.no_grad()
def main(args):
    check_args(args)
    RegroupConfig.from_args(args, seed=0)  # bad regroup settings: one line before any work
    device = select_device(args.gpu)
    dtype = args.dtype or ("tf32" if device.type == "cuda" else "fp32")
    dtype_line = check_dtype(dtype, device)
    made, in_channels = tickets(args)
    image_shape = (in_channels, args.image_size, args.image_size)
    header = environment_line(device) + f" | dtype {dtype_line} | runtime {', '.join(args.runtime)}"
    if device.type == "cuda":
        header += f" | {versions_line(versions())} | {precision_line(dtype)} | " \
                  f"{'CUDA graphs' if args.cuda_graphs else 'eager'}"
    print(header)
    rows = []
    for label, dense, masked, mask in made:
        forms, refill_mask, regrouped_mask = ticket_forms(args, dense, masked, mask, image_shape, device, dtype)
        regrouped = next(name for name in forms if name.startswith("regrouped"))
        info = forms[regrouped].info
        print(f"\n{label}: ticket sparsity {100 * mask.sparsity():.2f}% | refill {100 * refill_mask.sparsity():.2f}% "
              f"| regroup {100 * regrouped_mask.sparsity():.2f}% ({info['layers_with_blocks']}/{info['layers']} layers "
              f"with blocks, {info['run_as_blocks']} run as blocks)")
        mine = measure(forms, args.batch_size, image_shape, runtimes=args.runtime, dtype=dtype,
                       repeats=args.repeats or (50 if device.type == "cuda" else 10), device=device,
                       cuda_graphs=args.cuda_graphs,
                       compile_mode=args.compile_mode or ("reduce-overhead" if device.type == "cuda" else None))
        for row in mine:
            row["ticket"] = label
        print(table(mine))
        for row in mine:
            if row["form"] == regrouped and row.get("speedup"):
                print(f"batch {row['batch']}, {row['runtime']}: {regrouped}: {row['speedup']:.2f}x over "
                      f"{row['baseline']}, executed FLOPs ratio {row['flops_ratio']:.2f}x "
                      f"({row['speedup'] / row['flops_ratio']:.2f} of it)")
        rows += mine
    title = f"{header.split(' | torch')[0]} | {dtype} | {', '.join(args.runtime)}"
    if args.out:
        write_json(args.out, {"environment": header, "args": vars(args), "rows": json_rows(rows)})
        print(f"rows: {args.out}")
    if args.plot:
        plot_speedups(rows, args.plot, title)
        print(f"picture: {args.plot}")
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
