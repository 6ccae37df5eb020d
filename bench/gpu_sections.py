"""The work of profile/gpu_check.py, as sections of units (bench.budget):
each unit is one estimated piece of work and the callable that does it, so
the plan, the deadlines and the run see the same list.

(a) check: the Triton kernel (every variant the tuner may choose) and the
    CUDA C kernel against F.conv2d in float64, into poisoned outputs, and
    the Triton path's gradients;
(b) layers: regrouped layers against the vendor convolution, CIFAR
    ResNet-18 (batch 64) and ResNet-50's 3x3 layers at 224x224 (batch 64),
    with parts of 32, 64 and 128 rows;
(c) end to end: every form of a ticket at 80% (bench.network: dense, BN
    folded, slimmed refill and its round-8 ticket, regrouped with the
    per-layer choice, permuted grouped convolutions), checked then timed,
    CIFAR ResNet-18 at batch 1, 64, 256 and ResNet-50 224x224 at batch 64;
    then dense, slimmed and permuted under torch.compile;
(d) training: whole epochs of dense and masked training against the step
    alone (bench.training.epoch_rows): CIFAR ResNet-18 at batch 128 and 512
    on synthetic CIFAR through the per-image and device-resident paths,
    ResNet-50 at 224x224 on synthetic JPEG folders; one-epoch main_imp.py
    smoke runs (CUDA, torchrun); a compiled masked training step.

`Sizes` holds the shapes of the real run and of the CPU rehearsal: the
same code at tiny sizes.
"""
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from app.config import RegroupConfig
from bench.budget import Section, Unit
from bench.gpu import DTYPES, apply_precision, relative_error
from bench.network import (dense_forms, generated_dense, generated_ticket, json_rows, measure, refill_form,
                           regroup_form)
from bench.tickets import (TOLERANCE, check_layer, compare_layer, conv_input_shapes, random_regrouped_layer,
                           regroup_layer_by_rows)
from bench.training import (dense_and_masked, epoch_rows, epoch_table, synthetic_cifar, synthetic_jpeg_folders,
                            throughput)
from utils.checkpoint import summary_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_CASES = [  # (c_out, c_in, k, stride, padding, dilation, batch, size)
    (128, 64, 3, 1, 1, 1, 33, 32),
    (256, 128, 3, 2, 1, 1, 17, 16),
    (256, 128, 1, 2, 0, 1, 31, 16),
    (96, 80, 1, 1, 0, 1, 9, 20),
    (100, 70, 3, 1, 2, 2, 7, 24),
    (200, 96, 3, 1, 0, 1, 5, 15),
]


@dataclass(frozen=True)
class Sizes:
    """Shapes and counts of one mode of the check."""
    check_cases: tuple = tuple(CHECK_CASES)
    check_precisions: tuple = ("fp32", "tf32", "fp16", "bf16")
    layer_tickets: tuple = (("res18", 0.98, 32, 64, ("layer1.1.conv1", "layer2.1.conv1", "layer3.1.conv1",
                                                     "layer4.1.conv1")),
                            ("res50", 0.8, 224, 64, ("layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2",
                                                     "layer4.1.conv2")))  # (arch, sparsity, image, batch, layers)
    parts: tuple = (64, 128, 32)  # rows per part of the regrouped layers, the most promising first
    e2e: tuple = (("res18", 32, (1, 64, 256)), ("res50", 224, (64,)))  # (arch, image, batches)
    e2e_kernel: str = "triton"  # the regrouped network's kernel in (c)
    e2e_sparsity: float = 0.8
    compile_batch: int = 64
    train_batch: int = 128  # the compiled training step's
    train_steps: int = 20
    epoch_images: int = 5_000  # synthetic CIFAR images an epoch of (d)
    epoch_batches: tuple = (128, 512)
    jpeg: Optional[tuple] = ("res50", 224, 128, 512)  # (d)'s folder dataset: arch, crop, batch, JPEG images of 256x256
    epoch_repeats: int = 2
    repeats: int = 50
    compile_backend: str = "inductor"
    compile_mode: str = "reduce-overhead"
    device: str = "cuda"
    skipped: dict = field(default_factory=dict)  # what this mode leaves out, and why


REAL = Sizes()
# Tiny, so that Triton's interpreter (~10 ms per program and step) keeps the rehearsal to about a minute: the
# layers of (b) are the 64-channel ones (fewest K steps), the networks of (c) run the CPU path of RegroupedConv2d.
REHEARSAL = Sizes(
    check_cases=((48, 16, 3, 1, 1, 1, 3, 6), (64, 16, 1, 2, 0, 1, 2, 6)),
    check_precisions=("fp32", "fp16"),
    layer_tickets=(("res18", 0.98, 4, 2, ("layer1.1.conv1",)), ("res50", 0.8, 16, 1, ("layer1.1.conv2",))),
    e2e=(("res18", 8, (1, 2)), ("res50", 32, (2,))), e2e_kernel="auto",
    compile_batch=2, train_batch=4, train_steps=2, repeats=1, compile_backend="eager", compile_mode=None, device="cpu",
    epoch_images=32, epoch_batches=(8, 16), jpeg=("res50", 224, 4, 8), epoch_repeats=1,
    skipped={"CUDA C kernel": "it runs on a GPU only (the test suite compiles it with nvcc)",
             "tf32, bf16 in (a)": "Triton's interpreter ignores TF32 and its bf16 dot is wrong",
             "Triton in (c)": "the networks' regrouped layers run RegroupedConv2d's CPU path (the interpreter is "
                              "too slow for whole networks; (a) and (b) run it)",
             "inductor": "torch.compile runs with the eager backend: dynamo traces, inductor does not compile"})


def quick(sizes):
    """--quick: one ticket, one precision, one batch size."""
    arch, image, batches = sizes.e2e[0]
    return dataclasses.replace(sizes, layer_tickets=sizes.layer_tickets[:1],
                               e2e=((arch, image, (sizes.compile_batch if sizes.compile_batch in batches
                                                   else batches[-1],)),),
                               epoch_batches=sizes.epoch_batches[:1], jpeg=None)


# ---- (a) check ----------------------------------------------------------------------------------------------

def check_case(case, precisions, device, build):
    """Rows of one case: both units, every precision and Triton variant, the CUDA C kernel (fp32) where built."""
    from kernels.regrouped import RegroupedConv2d
    from kernels.triton_conv import default_config, variants_for
    generator = torch.Generator().manual_seed(sum(case))
    c_out, c_in, k, stride, padding, dilation, batch, size = case
    rows = []
    for unit in ("weight", "channel"):
        weight, blocks, bias = random_regrouped_layer(c_out, c_in, k, unit, generator, cn=6, b2=4)
        x64 = torch.randn(batch, c_in, size, size, generator=generator, dtype=torch.float64).to(device)
        reference = F.conv2d(x64, weight.double().to(device), bias.double().to(device), stride, padding, dilation)
        layer = (weight, blocks, unit, stride, padding, dilation, bias)
        for precision in precisions:
            dtype = apply_precision(precision)
            conv = RegroupedConv2d(*layer, kernel="triton").to(device)
            structure = conv.triton_state(x64.device, dtype)[0]
            for variant in variants_for(structure, conv.stride, x64.shape[-2:]):
                conv.triton_config = default_config(variant)
                error, ok = check_layer(conv, x64.to(dtype).contiguous(memory_format=torch.channels_last), reference,
                                        precision, "triton")
                rows.append({"case": case, "unit": unit, "precision": precision, "kernel": "triton",
                             "variant": variant, "error": error, "ok": ok, "limit": TOLERANCE[precision]})
        if build is not None and build.ready():
            apply_precision("fp32")
            error = relative_error(RegroupedConv2d(*layer, kernel="cuda").to(device)(x64.float()), reference)
            rows.append({"case": case, "unit": unit, "precision": "fp32", "kernel": "cuda", "error": error,
                         "ok": error < TOLERANCE["fp32"], "limit": TOLERANCE["fp32"]})
    return rows


def check_gradients(device):
    """The Triton path's input, block-weight and bias gradients against autograd through F.conv2d (fp32, TF32 off)."""
    from kernels.regrouped import RegroupedConv2d
    apply_precision("fp32")
    weight, blocks, bias = random_regrouped_layer(96, 64, 3, "weight", torch.Generator().manual_seed(1))
    conv = RegroupedConv2d(weight, blocks, "weight", 2, 1, 1, bias, kernel="triton").to(device)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 64, 9, 9, generator=g).to(device).requires_grad_()
    target = torch.randn(3, 96, 5, 5, generator=g).to(device)
    (conv(x) * target).sum().backward()
    dense = conv.dense_weight().detach().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, dense, b, 2, 1) * target).sum().backward()
    inside = conv.scatter_blocks([torch.ones_like(w) for w in conv.block_weights])  # block weights only
    errors = {"input": relative_error(x.grad, x2.grad), "bias": relative_error(conv.bias.grad, b.grad),
              "weight": relative_error(conv.scatter_blocks([w.grad for w in conv.block_weights]), dense.grad * inside)}
    return [{"kernel": "triton", "precision": "fp32", "case": "gradients", "error": max(errors.values()),
             "parts": errors, "ok": max(errors.values()) < 1e-5}]


def check_section(sizes, deadline, build):
    device = torch.device(sizes.device)
    work = [(Unit(f"{len(sizes.check_precisions)} precisions x both units x every variant: case {case}", "check case"),
             functools.partial(check_case, case, sizes.check_precisions, device, build)) for case in sizes.check_cases]
    work.append((Unit("Triton gradients against autograd (fp32)", "gradients"),
                 functools.partial(check_gradients, device)))
    return Section("a", "kernels against F.conv2d", deadline, [u for u, _ in work]), work


# ---- (b) layers ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def layer_ticket(arch, sparsity, image, batch):
    """(masked model, Mask, conv input shapes) of a generated ticket."""
    _, masked, mask = generated_ticket(arch, sparsity, 1000 if arch == "res50" else 10, 3, imagenet_stem=image >= 64)
    return masked, mask, conv_input_shapes(masked, (batch, 3, image, image))


def layer_row(arch, sparsity, image, batch, layer, rows_per_part, precision, unit, repeats, device):
    masked, mask, shapes = layer_ticket(arch, sparsity, image, batch)
    regrouped, info = regroup_layer_by_rows(mask[layer], rows_per_part, unit)
    conv = masked.get_submodule(layer)
    row = {"ticket": f"{arch} {image}x{image} {100 * sparsity:g}%", "layer": layer, "parts_rows": rows_per_part,
           "precision": precision, "kernel_size": conv.kernel_size[0], "input": list(shapes[layer])}
    if info.kept_mask or not info.blocks:
        return [{**row, "blocks": 0}]
    weight = conv.weight_orig.detach() * regrouped
    row.update(compare_layer(weight, info.blocks, unit, conv.stride, conv.padding, conv.dilation, shapes[layer],
                             precision, ("triton",), repeats, True, device))
    row.update(blocks=len(info.blocks), density=info.density_after, nonzeros_kept=info.nonzeros_kept)
    t = row.get("triton", {})
    print(f"  {row['ticket']} {precision} {layer:<16} parts {rows_per_part:>3} density {info.density_after:.3f} "
          f"cuDNN {row['cudnn']['ms']:.4f} ms, Triton {t.get('ms', float('nan')):.4f} ms "
          f"({t.get('vs_cudnn', float('nan')):.2f}x, {variant_text(t)})", flush=True)
    return [row]


def variant_text(t):
    c = t.get("config") or {}
    return f"{c.get('variant', 'gather')} {c['BLOCK_M']}/{c['num_warps']}/{c['num_stages']}" if "BLOCK_M" in c else ""


def layers_section(sizes, deadline, precisions, unit):
    device = torch.device(sizes.device)
    work = []
    for arch, sparsity, image, batch, layers in sizes.layer_tickets:
        for precision in precisions:
            for rows_per_part in sizes.parts:
                for layer in layers:
                    what = f"{arch} {image}x{image} {100 * sparsity:g}% batch {batch} {layer} parts {rows_per_part} {precision}"
                    work.append((Unit(what, "layer row" if image < 64 else "layer row 224"),
                                 functools.partial(layer_row, arch, sparsity, image, batch, layer, rows_per_part,
                                                   precision, unit, sizes.repeats, device)))
    return Section("b", "regrouped layers against the vendor convolution", deadline, [u for u, _ in work]), work


# ---- (c) end to end -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def e2e_forms(arch, sparsity, image, unit):
    """The device-independent forms of a generated ticket (CPU, fp32), the masked model, Mask and regroup config."""
    num_classes = 1000 if arch == "res50" else 10
    dense, masked, mask = generated_ticket(arch, sparsity, num_classes, 3, imagenet_stem=image >= 64)
    regroup = RegroupConfig(cn="auto", regroup_unit=unit, seed=0)
    shape = (3, image, image)
    forms = dense_forms(dense)
    forms["slimmed refill"], _ = refill_form(masked, mask)
    forms["slimmed refill, round 8"], _ = refill_form(masked, mask, 8)
    if unit == "channel":
        forms["permuted (grouped convolutions)"], _, _ = regroup_form(masked, mask, regroup, "permuted", shape)
    return forms, masked, mask, regroup


def e2e_unit(arch, image, batch, precision, sizes, unit):
    """Every form checked, then timed as CUDA-graph replays (the host clock in a rehearsal)."""
    device = torch.device(sizes.device)
    forms, masked, mask, regroup = e2e_forms(arch, sizes.e2e_sparsity, image, unit)
    shape = (3, image, image)
    example = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    kernel_form, _, _ = regroup_form(masked, mask, regroup, "kernel", shape, example, sizes.repeats, sizes.e2e_kernel,
                                     DTYPES[precision])
    name = f"regrouped ({'Triton' if sizes.e2e_kernel == 'triton' else 'CPU path'}, per-layer choice)"
    rows = measure({**forms, name: kernel_form}, [batch], shape,
                   dtype=precision, repeats=sizes.repeats, device=device, cuda_graphs=True)
    return [_e2e_row(row, arch, image) for row in rows]


def compile_unit(arch, image, batch, precision, sizes, unit):
    """Dense (BN folded), slimmed refill and permuted under torch.compile, compile seconds counted."""
    device = torch.device(sizes.device)
    forms, _, _, _ = e2e_forms(arch, sizes.e2e_sparsity, image, unit)
    chosen = {"dense, BN folded": dataclasses.replace(forms["dense, BN folded"], baseline=None)}
    chosen.update({name: form for name, form in forms.items()
                   if name in ("slimmed refill", "permuted (grouped convolutions)")})
    rows = measure(chosen, [batch], (3, image, image), runtimes=["compile"], dtype=precision, repeats=sizes.repeats,
                   device=device, compile_mode=sizes.compile_mode, compile_backend=sizes.compile_backend)
    return [_e2e_row(row, arch, image) for row in rows]


def _e2e_row(row, arch, image):
    row = {**json_rows([row])[0], "ticket": f"{arch} {image}x{image}"}
    speed = "ref" if row.get("speedup") is None else f"{row['speedup']:.2f}x"
    print(f"  {row['ticket']} batch {row['batch']} {row['dtype']} {row['runtime']:<7} {row['form']:<36} "
          f"{row.get('ms', float('nan')):8.3f} ms {speed:>6} (FLOPs ratio {row['flops_ratio']:.2f}x)"
          + (f", compiled in {row['compile_s']:.1f} s" if row.get("compile_s") else ""), flush=True)
    return row


def e2e_section(sizes, deadline, precisions, unit):
    work = []
    forms = 6 if unit == "channel" else 5
    for precision in precisions:
        for arch, image, batches in sizes.e2e:
            for batch in batches:
                what = f"{arch} {image}x{image} batch {batch} {precision}: {forms} forms checked, CUDA graphs"
                work.append((Unit(what, "e2e form", forms),
                             functools.partial(e2e_unit, arch, image, batch, precision, sizes, unit)))
    for precision in precisions[-1:]:
        for arch, image, batches in sizes.e2e:
            batch = sizes.compile_batch if sizes.compile_batch in batches else batches[-1]
            what = f"{arch} {image}x{image} batch {batch} {precision}: torch.compile of dense, slimmed, permuted"
            work.append((Unit(what, "compile", 3 if unit == "channel" else 2),
                         functools.partial(compile_unit, arch, image, batch, precision, sizes, unit)))
    return Section("c", "whole networks: every form, checked then timed", deadline, [u for u, _ in work]), work


# ---- (d) training -------------------------------------------------------------------------------------------

def train_unit(masked, compiled, sizes):
    device = torch.device(sizes.device)
    image = sizes.e2e[0][1]
    model = generated_ticket("res18", sizes.e2e_sparsity)[1] if masked else generated_dense("res18")
    result = throughput(model, sizes.train_batch, (3, image, image), 10, device, amp=True, compiled=compiled,
                        steps=sizes.train_steps, compile_mode=None, compile_backend=sizes.compile_backend)
    result.update(model="masked (80%)" if masked else "dense", image=image)
    print(f"  training {result['model']} {'compiled' if compiled else 'eager'}: {result['images_per_s']:.0f} images/s "
          f"({result['step_ms']:.2f} ms a step of {result['batch']})"
          + (f", compiled in {result['compile_s']:.1f} s" if compiled else ""), flush=True)
    return [result]


def epoch_unit(arch, batch, sizes, jpeg=False):
    """Whole epochs against the step alone (bench.training.epoch_rows), dense
    and masked (80%): synthetic CIFAR held in memory (per-image and
    device-resident paths), or ImageNet-style JPEG folders (per-image)."""
    device = torch.device(sizes.device)
    with tempfile.TemporaryDirectory() as folder:
        if jpeg:
            data = synthetic_jpeg_folders(folder, sizes.jpeg[3], 256)
        else:
            data = synthetic_cifar(sizes.epoch_images)
        models = dense_and_masked(arch, data.spec, sizes.e2e_sparsity,
                                  masked_label=f"masked ({100 * sizes.e2e_sparsity:.0f}%)")
        rows = epoch_rows(models, data, batch, device, repeats=sizes.epoch_repeats, amp=True, ceiling_steps=sizes.train_steps,
                          say=lambda line: print(line, flush=True))
    shape = f"{arch} {data.spec.image_size}x{data.spec.image_size} batch {batch}"
    print("\n".join([f"  epochs of {shape} ({len(data.train)} images):"] + epoch_table(rows)), flush=True)
    return [{"epoch": True, "ticket": shape, "dataset": "synthetic JPEG folders" if jpeg else "synthetic CIFAR",
             **row} for row in rows]


def smoke_runs(sizes):
    """main_imp.py for one epoch on digits on the device, then under torchrun (NCCL on a GPU, gloo on the CPU)."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["main_imp.py", "--epochs", "1", "--pruning_times", "1", "--print_freq", "1000"]
        gpu = ["--gpu", "0"] if sizes.device == "cuda" else []
        commands = {"single": [sys.executable] + common + gpu + ["--save_dir", os.path.join(tmp, "single")],
                    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "1"] + common + ["--save_dir", os.path.join(tmp, "ddp")]}
        for name, command in commands.items():
            tic = time.time()
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
            summary = summary_path(command[command.index("--save_dir") + 1])
            runs[name] = {"returncode": proc.returncode, "seconds": round(time.time() - tic, 1),
                          "summary_written": os.path.exists(summary), "tail": (proc.stdout + proc.stderr)[-1500:]}
            if os.path.exists(summary):
                with open(summary) as f:
                    saved = json.load(f)
                runs[name]["device"] = saved.get("environment", {}).get("device")
                states = saved.get("states", [])
                runs[name]["test_accuracy"] = states[0].get("test_acc_at_best_val") if states else None
    failed = [n for n, r in runs.items() if r["returncode"] != 0 or not r["summary_written"]]
    if failed:
        raise AssertionError(f"training failed: {failed}: {json.dumps({n: runs[n] for n in failed})[:3000]}")
    print("  smoke runs: " + ", ".join(f"{n} exit {r['returncode']} in {r['seconds']} s" for n, r in runs.items()),
          flush=True)
    return [{"smoke": runs}]


def training_section(sizes, deadline):
    image = sizes.e2e[0][1]
    shape = f"res18 {image}x{image} batch {sizes.train_batch}, AMP, channels-last"
    # Whole epochs first (what an IMP run spends its GPU hours on), then the smoke runs, then a compiled step.
    work = [(Unit(f"res18 32x32 batch {batch}, {sizes.epoch_images} synthetic CIFAR images: step alone, per-image "
                  "and device-resident epochs, dense and masked", "train epochs"),
             functools.partial(epoch_unit, "res18", batch, sizes)) for batch in sizes.epoch_batches]
    if sizes.jpeg is not None:
        arch, crop, batch, count = sizes.jpeg
        work.append((Unit(f"{arch} {crop}x{crop} batch {batch}, {count} synthetic JPEGs in folders: step alone and "
                          "per-image epochs, dense and masked", "train epochs 224"),
                     functools.partial(epoch_unit, arch, batch, sizes, True)))
    work += [(Unit("main_imp.py one epoch on the device, and under torchrun", "smoke runs"),
              functools.partial(smoke_runs, sizes)),
             (Unit(f"masked {shape}, torch.compile", "compile train"), functools.partial(train_unit, True, True, sizes))]
    return Section("d", "training: whole epochs against the step, smoke runs", deadline, [u for u, _ in work]), work
