"""Whole-network inference of a ticket in its forms: the one code path of
every end-to-end benchmark (profile/end_to_end.py; the presets over it,
profile/slim_speed.py, profile/regroup_conv/cpu_speed.py and
profile/onnx_speed.py; gpu_check.py's end-to-end section).

A form is one way to run a ticket: the dense model (a reference row), its
inference form with BatchNorm folded, the masked ticket, the slimmed refill
ticket (rounded or not), the regrouped ticket (permuted or grouped
convolutions, or RegroupedConv2d layers). `measure` checks every form
against the model it implements, prepares it for each runtime (PyTorch
eager, torch.compile, ONNX Runtime) in one dtype, times all of them in turn
and returns one row per (batch, form, runtime): time, speedup over its
baseline with p10-p90, the FLOPs it executes and their ratio to the
baseline's. On the CPU the forms alternate round by round and speedups are
the median of each round's ratio (utils.timing.paired_speedup); on a GPU
they are timed with CUDA events or graphs over rotating inputs (DESIGN §7)
and a speedup is the ratio of medians. bf16 on the CPU needs native bf16
(AVX512-BF16 or AMX): each bf16 form is compared with its fp32 self first
and not timed when its predictions agree on fewer than 99% of the batch.
"""
import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from kernels.grouped import grouped_model
from kernels.permuted import permuted_model
from kernels.regrouped import regroup_model
from models import build_model
from pruner.fold_bn import fold_batchnorm
from pruner.magnitude import global_magnitude_prune
from pruner.masking import apply_mask, load_plain_weights, refresh_masked_weights, strip_masks
from pruner.refill import refill
from pruner.slim import slim
from bench.gpu import DTYPES, PRECISIONS, relative_error
from utils.errors import InvalidInput
from utils.flops import masked_flops, model_flops
from utils.runtime import native_bf16
from utils.timing import alternating_samples, eager_timings, graph_timings, paired_speedup, summary

RUNTIMES = ("torch", "compile", "onnxruntime", "onnxruntime-cuda")  # ONNX Runtime's CPU and CUDA providers
CPU_DTYPES = ("fp32", "bf16")
CPU_TOLERANCE = 1e-3  # max |diff| of an fp32 form from the model it implements, on the CPU
GPU_TOLERANCE = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 2e-2, "bf16": 6e-2}  # relative error of a network vs float64
MIN_AGREEMENT = 0.99  # share of the batch on which a bf16 form predicts what its fp32 self predicts


@dataclass
class Form:
    """One way of running a ticket."""
    model: torch.nn.Module
    baseline: Optional[str] = None  # the form whose time this one's speedup is over; None: a reference row
    implements: Optional[torch.nn.Module] = None  # the model whose outputs it must give; None: nothing to check
    ideal_flops: Optional[float] = None  # per image, as an ideal sparse kernel would run it (None: as executed)
    structured: bool = False  # a structured form of the ticket: a line of the picture
    info: dict = field(default_factory=dict)  # recorded in its rows (weights, channels kept, layers, ...)


# ---- tickets and their forms ---------------------------------------------------------------------------------

def copied(model):
    """A deep copy (prune's cached weights refreshed without autograd first)."""
    refresh_masked_weights(model)
    return copy.deepcopy(model)


def trained_looking(model, seed=0):
    """`model` in eval mode with BatchNorm statistics and shifts moved off their
    initial values (seeded), as in a trained network: removed channels then
    leave non-zero constants behind, which slimmed and exported models must
    reproduce."""
    g = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 2 - 1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
        bn.bias.data.copy_(torch.rand(bn.num_features, generator=g) * 2 - 1)
    return model.eval()


def generated_dense(arch, num_classes=10, in_channels=3, seed=0, imagenet_stem=False):
    """`arch`'s initial weights (seeded), BatchNorm as after training, eval mode."""
    torch.manual_seed(seed)
    return trained_looking(build_model(arch, num_classes, in_channels, imagenet_stem=imagenet_stem), seed)


def generated_ticket(arch, sparsity, num_classes=10, in_channels=3, seed=0, imagenet_stem=False):
    """(dense model, masked copy, Mask): one seeded global magnitude step at
    `sparsity` on generated_dense's weights; the benchmark tickets that need
    no trained run."""
    dense = generated_dense(arch, num_classes, in_channels, seed, imagenet_stem)
    masked = copied(dense)
    mask = global_magnitude_prune(masked, sparsity)
    apply_mask(masked, mask)
    return dense, masked.eval(), mask


def dense_of(masked):
    """The masked model's weights without masks (pruned weights as trained, so
    dense timings never run on zeros)."""
    dense = strip_masks(copied(masked))
    load_plain_weights(dense, {k.replace("_orig", ""): v for k, v in masked.state_dict().items()
                               if not k.endswith("_mask")})
    return dense.eval()


def dense_forms(dense, folded=True, unfolded=True):
    """"dense" (the reference) and "dense, BN folded" (its inference form,
    checked against it; the reference itself without `unfolded`)."""
    forms = {"dense": Form(dense)} if unfolded else {}
    if folded:
        forms["dense, BN folded"] = Form(fold_batchnorm(copied(dense))[0].eval(),
                                         baseline="dense" if unfolded else None, implements=dense)
    return forms


def ideal_flops(masked, image_shape, mask):
    """FLOPs per image of `masked` with each masked layer scaled by its density in `mask`."""
    return sum(row["m"] for row in masked_flops(masked, (1,) + tuple(image_shape), {"m": mask}).values())


def kept_weights(mask):
    return sum(int(m.count_nonzero()) for m in mask.values())


def refill_form(masked, mask, round_to=1, fold_bn=True, baseline=None):
    """(the slimmed refill ticket of `mask` as a Form, its refill mask):
    refilled by magnitude at rate 0, k rounded up to `round_to`, slimmed
    with BatchNorm folded (`fold_bn`), checked against the refilled masked model."""
    refill_mask = refill(masked, mask, "magnitude", 0.0, None, round_to)
    refilled = copied(masked)
    apply_mask(refilled, refill_mask)
    channels = sum(int(m.flatten(1).amax(1).sum()) for m in refill_mask.values())
    info = {"weights": kept_weights(refill_mask),
            "channels_kept": channels / sum(m.shape[0] for m in refill_mask.values())}
    model = slim(refilled, fold_bn=fold_bn).eval()
    return Form(model, baseline or ("dense, BN folded" if fold_bn else "dense"), refilled.eval(), structured=True,
                info=info), refill_mask


def regroup_form(masked, mask, regroup, how, image_shape, example_input=None, repeats=5, kernel="auto",
                 dtype=torch.float32):
    """(the regrouped ticket as a Form, regrouped Mask, infos). `regroup`: a
    RegroupConfig; `how`: "permuted" (channel unit, BatchNorm folded, each
    layer grouped or dense as times faster on `example_input`; a CPU
    tensor, or None for every layer grouped), "grouped" (channel unit,
    exportable) or "kernel" (RegroupedConv2d layers, each kept only where
    faster than its dense convolution on `example_input`, on its device
    and in `dtype`)."""
    regrouped_mask, infos = regroup.regroup(mask)
    reference = copied(masked)
    apply_mask(reference, regrouped_mask)
    reference.eval()
    ideal = ideal_flops(masked, image_shape, regrouped_mask)
    info = {"layers_with_blocks": sum(not i.kept_mask for i in infos.values()), "layers": len(infos),
            "density": regrouped_mask.density()}
    if how == "permuted":
        model, layers, folded = permuted_model(reference, regroup.cn, regroup.b2, example_input=example_input,
                                               repeats=repeats)
        info.update(per_layer=layers, folded_chains=len(folded), run_as_blocks=sum(r["form"] == "grouped"
                                                                                   for r in layers.values()))
        baseline = "dense, BN folded"
    elif how == "grouped":
        model, layers = grouped_model(reference, "channel", regroup.cn, regroup.b2)
        info.update(per_layer=layers, run_as_blocks=sum(v.startswith("grouped") for v in layers.values()))
        baseline = "dense"
    elif how == "kernel":
        on_device = copied(reference).to(device=example_input.device, dtype=dtype, memory_format=torch.channels_last)
        model, choice = regroup_model(on_device, infos, regroup.regroup_unit, example_input.to(dtype), repeats, kernel)
        strip_masks(model)  # layers without blocks run as plain convolutions on their zeroed weights
        info.update(per_layer=choice, run_as_blocks=sum(c == "regrouped" for c in choice.values()))
        baseline = "dense"
    else:
        raise ValueError(f"unknown regrouped form '{how}'")
    return Form(model.eval(), baseline, reference, ideal, structured=True, info=info), regrouped_mask, infos


# ---- preparing, checking and timing --------------------------------------------------------------------------

def check_dtype(dtype, device):
    """Refuse a dtype this device cannot time fairly, in one line; the header phrase for it."""
    if device.type == "cuda":
        if dtype not in PRECISIONS:
            raise InvalidInput(f"--dtype {dtype}: on a GPU one of {', '.join(PRECISIONS)}")
        return dtype
    if dtype not in CPU_DTYPES:
        raise InvalidInput(f"--dtype {dtype}: the CPU paths compute in fp32 or, with native bf16, bf16 "
                           "(other precisions need a GPU)")
    if dtype == "bf16":
        found = native_bf16()
        if found is None:
            raise InvalidInput("--dtype bf16: this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in "
                               "/proc/cpuinfo), where bf16 would be emulated and slower than fp32: use fp32")
        return f"bf16 (native: {found})"
    return "fp32"


def _on(model, device, dtype, memory_format):
    return copied(model).to(device=device, dtype=DTYPES[dtype], memory_format=memory_format).eval()


@torch.no_grad()
def _check(forms, x, device, dtype):
    """{name: max |diff| (CPU, fp32) or relative error (GPU) from the model it
    implements, None for forms with nothing to check}; raises on a mismatch."""
    errors = {}
    for name, form in forms.items():
        if form.implements is None:
            errors[name] = None
            continue
        if device.type == "cuda":
            expected = copied(form.implements).to(device=device, dtype=torch.float64).eval()(x.double())
            got = _on(form.model, device, dtype, torch.channels_last)(x.to(DTYPES[dtype]))
            errors[name] = relative_error(got, expected)
            limit = GPU_TOLERANCE[dtype]
        else:
            errors[name] = (form.model(x) - form.implements(x)).abs().max().item()
            limit = CPU_TOLERANCE
        if not errors[name] < limit:
            raise InvalidInput(f"{name} differs from the model it implements by {errors[name]:.2e} (limit {limit:g})")
    return errors


@torch.no_grad()
def _bf16_agreement(model, bf16_model, x):
    """(max |bf16 - fp32|, share of the batch where both predict the same class)."""
    full, half = model(x), bf16_model(x.to(torch.bfloat16)).float()
    return (half - full).abs().max().item(), (half.argmax(1) == full.argmax(1)).float().mean().item()


class _Prepared:
    """A form made ready for one runtime: call(x) runs it on an input of the batch."""

    def __init__(self, form, runtime, device, dtype, memory_format, compiler, folder, probe):
        self.compile_seconds = None
        if runtime.startswith("onnxruntime"):
            from app.onnx_export import INPUT_NAME, export_onnx, onnx_modules, ort_session
            if dtype not in ("fp32", "tf32"):
                raise InvalidInput(f"--runtime {runtime} runs the exported fp32 model: --dtype fp32")
            providers = ["CPUExecutionProvider"]
            if runtime == "onnxruntime-cuda":
                if "CUDAExecutionProvider" not in onnx_modules()[1].get_available_providers():
                    raise InvalidInput("--runtime onnxruntime-cuda: this onnxruntime has no CUDA provider")
                providers.insert(0, "CUDAExecutionProvider")
            path = os.path.join(folder, f"{id(self)}.onnx")
            export_onnx(copied(form.model).cpu().float().eval(), [probe[:2], probe, probe[:1]], path)
            session = ort_session(path, providers)
            self.call = lambda x: session.run(None, {INPUT_NAME: x.numpy()})
            return
        model = _on(form.model, device, dtype, memory_format)
        if runtime == "compile":
            mode, backend = compiler
            model = torch.compile(model, mode=mode, backend=backend)
        self.call = model

    def warm(self, x):
        """The first call (torch.compile compiles here: its seconds are kept)."""
        tic = time.perf_counter()
        self.call(x)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - tic


def _flops(form, image_shape):
    one = (1,) + tuple(image_shape)
    model = copied(form.model).cpu().float()
    for module in model.modules():
        if hasattr(module, "kernel_for"):  # a RegroupedConv2d built for a GPU kernel: its CPU path counts the same
            module.kernel = "auto"
    executed = model_flops(model, one)
    return executed, form.ideal_flops if form.ideal_flops is not None else executed


@torch.no_grad()
def measure(forms, batches, image_shape, *, runtimes=("torch",), dtype="fp32", repeats=10, device=None,
            cuda_graphs=True, memory_format=torch.channels_last, compile_mode=None, compile_backend="inductor", seed=0,
            warmup=3):
    """Rows of every (batch, form, runtime): see the module docstring. Every
    form is checked (and, in bf16, compared with its fp32 self) before
    anything is timed; a form refused in bf16 gets a row saying why."""
    device = device or torch.device("cpu")
    check_dtype(dtype, device)
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise InvalidInput(f"unknown --runtime '{runtime}'; valid: {', '.join(RUNTIMES)}")
    for name, form in forms.items():
        if form.baseline is not None and form.baseline not in forms:
            raise ValueError(f"form '{name}' is timed against '{form.baseline}', which is not measured")
    generator = torch.Generator().manual_seed(seed)
    probe = torch.rand(3, *image_shape, generator=generator)
    errors = _check(forms, probe.to(device).contiguous(memory_format=memory_format), device, "fp32"
                    if device.type == "cpu" else dtype)
    flops = {name: _flops(form, image_shape) for name, form in forms.items()}
    halves = ({name: _on(form.model, device, "bf16", torch.channels_last) for name, form in forms.items()}
              if dtype == "bf16" and device.type == "cpu" else {})  # compared with their fp32 selves per batch
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        prepared = {(name, runtime): _Prepared(form, runtime, device, dtype, memory_format, (compile_mode, compile_backend),
                                               folder, probe)
                    for runtime in runtimes for name, form in forms.items()}
        for batch in batches:
            x = torch.rand(batch, *image_shape, generator=generator).contiguous(memory_format=memory_format)
            agreement, refused = _bf16_comparison(forms, halves, x)
            live = {key: p for key, p in prepared.items() if key[0] not in refused}
            stats = _time(live, x, device, dtype, repeats, cuda_graphs, memory_format, warmup)
            for (name, runtime), p in prepared.items():
                form = forms[name]
                executed, ideal = flops[name]
                base = flops[form.baseline][0] if form.baseline else executed
                row = {"batch": batch, "form": name, "runtime": runtime, "dtype": dtype, "baseline": form.baseline,
                       "structured": form.structured, "executed_mflops": executed / 1e6, "ideal_mflops": ideal / 1e6,
                       "flops_ratio": base / executed, "check": errors[name], "speedup": None, "speedup_p10": None,
                       "speedup_p90": None, **form.info}
                if name in refused:
                    row.update(refused[name])
                    rows.append(row)
                    continue
                row.update(stats[(name, runtime)], compile_s=p.compile_seconds if runtime == "compile" else None)
                row.update(agreement.get(name, {}))
                if form.baseline and (form.baseline, runtime) in stats:
                    row.update(_speedup(stats, (form.baseline, runtime), (name, runtime)))
                rows.append(row)
    return rows


def _bf16_comparison(forms, halves, x):
    """({name: bf16 max |diff| and argmax agreement with its fp32 self},
    {name: row fields of a form refused for agreeing on < MIN_AGREEMENT})
    for the forms with a bf16 copy in `halves` (the CPU in bf16)."""
    agreement, refused = {}, {}
    for name, half in halves.items():
        diff, share = _bf16_agreement(forms[name].model, half, x)
        agreement[name] = {"bf16_max_abs_diff": diff, "bf16_argmax_agreement": share}
        if share < MIN_AGREEMENT:
            refused[name] = {**agreement[name], "refused": f"bf16 predictions agree with fp32 on {100 * share:.1f}% "
                                                           f"of the batch (< {100 * MIN_AGREEMENT:.0f}%): not timed"}
    return agreement, refused


def _time(prepared, x, device, dtype, repeats, cuda_graphs, memory_format, warmup):
    """{(name, runtime): {ms, p10_ms, p90_ms, samples (alternating rounds)}}.
    ONNX Runtime runs on the host: on a GPU machine its forms alternate among
    themselves on the CPU clock, the PyTorch forms are timed on the GPU."""
    if device.type != "cuda":
        return _alternating(prepared, x, dtype, device, repeats, warmup)
    from bench.gpu import rotating_inputs
    host = {key: p for key, p in prepared.items() if key[1].startswith("onnxruntime")}
    out = _alternating(host, x, "fp32", torch.device("cpu"), repeats, warmup) if host else {}
    inputs = rotating_inputs(tuple(x.shape), DTYPES[dtype], device, memory_format, most=16)
    for runtime in sorted({key[1] for key in prepared} - {key[1] for key in host}):
        calls = {key: (p.call, inputs) for key, p in prepared.items() if key[1] == runtime}
        for key in calls:
            prepared[key].warm(inputs[0])
        timer = graph_timings if cuda_graphs and runtime == "torch" else eager_timings
        for key, t in timer(calls, repeats, warmup).items():
            out[key] = {"ms": 1e3 * t["median"], "p10_ms": 1e3 * t["p10"], "p90_ms": 1e3 * t["p90"]}
    return out


def _alternating(prepared, x, dtype, device, repeats, warmup):
    inputs = {key: x.float().contiguous() if key[1].startswith("onnxruntime") else x.to(DTYPES[dtype])
              for key in prepared}
    for key, p in prepared.items():
        p.warm(inputs[key])
    samples = alternating_samples({key: (lambda p=p, x=inputs[key]: p.call(x)) for key, p in prepared.items()},
                                  device, repeats, warmup)
    return {key: {"ms": 1e3 * t["median"], "p10_ms": 1e3 * t["p10"], "p90_ms": 1e3 * t["p90"], "samples": samples[key]}
            for key, t in ((key, summary(s)) for key, s in samples.items())}


def _speedup(stats, base, name):
    """Speedup of `name` over `base`: paired round by round on the CPU, the
    ratio of medians (p10-p90 from the form's spread) on a GPU."""
    if "samples" in stats[name]:
        s = paired_speedup({base: stats[base]["samples"], name: stats[name]["samples"]}, base, name)
        return {"speedup": s["median"], "speedup_p10": s["p10"], "speedup_p90": s["p90"]}
    b = stats[base]["ms"]
    return {"speedup": b / stats[name]["ms"], "speedup_p10": b / stats[name]["p90_ms"],
            "speedup_p90": b / stats[name]["p10_ms"]}


def json_rows(rows):
    """The rows without their raw samples (what --out writes)."""
    return [{k: v for k, v in row.items() if k not in ("samples", "per_layer")} for row in rows]


# ---- what end_to_end.py prints and draws ---------------------------------------------------------------------

def table(rows):
    """One line per row: time, speedup [p10-p90] over its baseline, FLOPs
    ratio, speedup/FLOPs, the check ('ref' for rows with nothing to check)."""
    lines = [f"{'batch':>5} {'form':<28} {'runtime':<11} {'ms':>9} {'speedup':>8} {'p10-p90':>11} {'over':<16} "
             f"{'FLOPs ratio':>11} {'of FLOPs':>8} {'check':>9}"]
    for r in rows:
        check = "ref" if r["check"] is None else f"{r['check']:.1e}"
        if "refused" in r:
            lines.append(f"{r['batch']:5d} {r['form']:<28} {r['runtime']:<11} {'-':>9} {'':>8} {'':>11} {'':<16} "
                         f"{r['flops_ratio']:10.2f}x {'':>8} {check:>9}  {r['refused']}")
            continue
        if r.get("speedup") is None:
            speed = f"{'ref':>8} {'':>11} {'':<16}"
            share = f"{'':>8}"
        else:
            speed = (f"{r['speedup']:7.2f}x {r['speedup_p10']:5.2f}-{r['speedup_p90']:<5.2f} "
                     f"{r['baseline']:<16}")
            share = f"{r['speedup'] / r['flops_ratio']:8.2f}"
        agreement = r.get("bf16_argmax_agreement")
        lines.append(f"{r['batch']:5d} {r['form']:<28} {r['runtime']:<11} {r['ms']:9.2f} {speed} "
                     f"{r['flops_ratio']:10.2f}x {share} {check:>9}"
                     + ("" if agreement is None else f"  bf16 agrees with fp32 on {100 * agreement:.0f}%"))
    return "\n".join(lines)


def plot_speedups(rows, path, title):
    """Speedup over the dense baseline against batch size: one panel per
    ticket, one line per structured form and runtime with its p10-p90 band,
    its executed FLOPs ratio as a dashed line of its colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from app.report import save_figure

    tickets = list(dict.fromkeys(r.get("ticket", "") for r in rows))
    fig, axes = plt.subplots(1, len(tickets), figsize=(6.2 * len(tickets), 4.6), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, ticket in zip(axes[0], tickets):
        lines = [r for r in rows if r.get("ticket", "") == ticket and r["structured"] and r.get("speedup")]
        keys = list(dict.fromkeys((r["form"], r["runtime"]) for r in lines))
        for i, key in enumerate(keys):
            mine = sorted((r for r in lines if (r["form"], r["runtime"]) == key), key=lambda r: r["batch"])
            colour = colours[i % len(colours)]
            batches = [r["batch"] for r in mine]
            label = key[0] if len({k[1] for k in keys}) == 1 else f"{key[0]} ({key[1]})"
            ax.plot(batches, [r["speedup"] for r in mine], "o-", color=colour, label=label)
            ax.fill_between(batches, [r["speedup_p10"] for r in mine], [r["speedup_p90"] for r in mine],
                            color=colour, alpha=0.18, lw=0)
            ax.axhline(mine[0]["flops_ratio"], color=colour, ls="--", lw=1)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["batch"] for r in lines}) or [1])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(xlabel="batch size", title=ticket)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="dashed: FLOPs ratio", title_fontsize=7)
    axes[0][0].set_ylabel("speedup over dense (same BatchNorm form)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path
