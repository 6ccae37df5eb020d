"""Everything this tool claims about GPUs, checked and timed in one command
(DESIGN.md §7), in a few minutes, with nothing to download or install.

    python profile/gpu_check.py --out runs/gpu_check

First the Triton kernel's tile variant runs once in a child process; if it
fails there it is switched off for the run (STRUCTLTH_TRITON_TILE=0).
(a) the Triton (every variant that applies) and CUDA C kernels against
    F.conv2d (float64) over the test cases at full size, in fp32, tf32, fp16
    and bf16, into poisoned outputs, and the Triton path's gradients against
    autograd through F.conv2d;
(b) every 3x3 and 1x1 convolution of a CIFAR ResNet-18 at --layer_batch,
    regrouped at two densities, Triton (with the variant and tiles the tuner
    chose) and CUDA C against cuDNN in tf32 and bf16 (CUDA-graph replays
    over rotating inputs, medians and spread);
(c) ResNet-18 end to end, dense vs regrouped (per-layer choice) vs slimmed
    refill, at each --batch_sizes, CUDA graphs on both sides;
(d) main_imp.py on digits for one epoch on CUDA (AMP, channels-last), and
    once under torchrun --nproc_per_node 1 (NCCL);
(e) report.json and report.md under --out, the tables printed last.

Tickets: one seeded global magnitude step on ResNet-18's initial weights at
each --sparsities; each layer regrouped (--regroup_unit) with parts of about
--rows_per_part rows (cn = c_out / rows_per_part, b2 = rows_per_part / 2),
which gives every layer blocks. Each section that fails is recorded with its
error and the others still run; the exit status is non-zero if any did.
Without CUDA it stops with one line.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.checkpoint import summary_path  # noqa: E402
from utils.errors import InvalidInput, run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_CASES = [  # (c_out, c_in, k, stride, padding, dilation, batch, size)
    (128, 64, 3, 1, 1, 1, 33, 32),
    (256, 128, 3, 2, 1, 1, 17, 16),
    (256, 128, 1, 2, 0, 1, 31, 16),
    (96, 80, 1, 1, 0, 1, 9, 20),
    (100, 70, 3, 1, 2, 2, 7, 24),
    (200, 96, 3, 1, 0, 1, 5, 15),
]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.98],
                   help="global magnitude sparsity of the two tickets")
    p.add_argument("--rows_per_part", type=int, default=32)
    p.add_argument("--regroup_unit", default="channel", choices=["weight", "channel"],
                   help="channel-unit layers can run the Triton kernel's tile variant (bulk copies); "
                        "weight-unit layers run its gather variant")
    p.add_argument("--layer_batch", type=int, default=64)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256], help="end-to-end batch sizes")
    p.add_argument("--precisions", nargs="+", default=["tf32", "bf16"], choices=["fp32", "tf32", "fp16", "bf16"])
    p.add_argument("--repeats", type=int, default=50, help="timed graph replays per measurement")
    p.add_argument("--skip", nargs="*", default=[], choices=["check", "layers", "end_to_end", "training"])
    p.add_argument("--tile_smoke", action="store_true", help=argparse.SUPPRESS)  # the child process of tile_smoke()
    return p


def tile_smoke():
    """Run the Triton kernel's tile variant (new, never run on a GPU before
    2026-11-26) once in a child process against F.conv2d in fp32 and bf16.
    A fault there cannot take this process's CUDA context down with it; if
    the child fails, the variant is switched off for the rest of this run
    (STRUCTLTH_TRITON_TILE=0) and the report says so."""
    tic = time.time()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--out", "unused", "--tile_smoke"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        ok, tail = False, "timed out after 300 s"
    if not ok:
        os.environ["STRUCTLTH_TRITON_TILE"] = "0"
    print(f"tile variant smoke check: {'passed' if ok else 'FAILED, switched off for this run'} "
          f"({time.time() - tic:.0f} s){'' if ok else chr(10) + tail}", flush=True)
    return {"ok": ok, "output": tail, "seconds": round(time.time() - tic, 1)}


def tile_smoke_child():
    """The child of tile_smoke: exit 0 only if the tile variant matches F.conv2d."""
    from kernels.regrouped import RegroupedConv2d
    from kernels.triton_conv import default_config
    from bench.gpu import apply_precision
    from bench.tickets import TOLERANCE, check_layer, random_regrouped_layer
    weight, blocks, bias = random_regrouped_layer(128, 64, 3, "channel", torch.Generator().manual_seed(2), cn=4, b2=8)
    x64 = torch.randn(9, 64, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64).cuda()
    reference = F.conv2d(x64, weight.double().cuda(), bias.double().cuda(), 1, 1)
    for precision in ("fp32", "bf16"):
        dtype = apply_precision(precision)
        conv = RegroupedConv2d(weight, blocks, "channel", 1, 1, 1, bias, kernel="triton").cuda()
        conv.triton_config = default_config("tile")
        error, ok = check_layer(conv, x64.to(dtype).contiguous(memory_format=torch.channels_last), reference,
                                precision, "triton")
        torch.cuda.synchronize()
        print(f"tile variant, {precision}: relative error {error:.2e} (limit {TOLERANCE[precision]})", flush=True)
        if not ok:
            raise SystemExit(1)


class Report:
    """Sections with their results or errors, written after each one."""

    def __init__(self, out):
        self.out, self.data, self.failed, self.start = out, {}, [], time.time()

    def run(self, name, fn, *args):
        tic = time.time()
        print(f"[{time.time() - self.start:6.1f}s] {name} ...", flush=True)
        try:
            self.data[name] = fn(*args)
        except Exception as err:  # noqa: BLE001 - a failed section is reported, the others still run
            self.failed.append(name)
            self.data[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(self.data[name]["traceback"], flush=True)
        self.data.setdefault("seconds", {})[name] = round(time.time() - tic, 1)
        self.save()

    def save(self):
        with open(os.path.join(self.out, "report.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)


class CudaBuild(threading.Thread):
    """nvcc builds the CUDA C kernel (about a minute) while the Triton checks run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.error = None

    def run(self):
        try:
            from kernels.regrouped import _cuda_kernel
            _cuda_kernel()
        except Exception as err:  # noqa: BLE001
            self.error = f"{type(err).__name__}: {err}"

    def ready(self):
        self.join()
        return self.error is None


def check_kernels(build):
    """(a): every case, unit and precision; Triton into a NaN-poisoned output."""
    from kernels.regrouped import RegroupedConv2d
    from kernels.triton_conv import default_config, variants_for
    from bench.gpu import apply_precision, relative_error
    from bench.tickets import TOLERANCE, check_layer, random_regrouped_layer
    rows, layers = [], []
    generator = torch.Generator().manual_seed(0)
    for case in CHECK_CASES:
        c_out, c_in, k, stride, padding, dilation, batch, size = case
        for unit in ("weight", "channel"):
            weight, blocks, bias = random_regrouped_layer(c_out, c_in, k, unit, generator, cn=6, b2=4)
            x64 = torch.randn(batch, c_in, size, size, generator=generator, dtype=torch.float64).cuda()
            reference = F.conv2d(x64, weight.double().cuda(), bias.double().cuda(), stride, padding, dilation)
            layers.append((case, unit, (weight, blocks, unit, stride, padding, dilation, bias), x64, reference))
    for case, unit, layer, x64, reference in layers:
        for precision in ("fp32", "tf32", "fp16", "bf16"):
            dtype = apply_precision(precision)
            conv = RegroupedConv2d(*layer, kernel="triton").cuda()
            structure = conv.triton_state(x64.device, dtype)[0]
            for variant in variants_for(structure, conv.stride, x64.shape[-2:]):  # every one the tuner may choose
                conv.triton_config = default_config(variant)
                error, ok = check_layer(conv, x64.to(dtype).contiguous(memory_format=torch.channels_last), reference,
                                        precision, "triton")
                rows.append({"case": case, "unit": unit, "precision": precision, "kernel": "triton",
                             "variant": variant, "error": error, "ok": ok, "limit": TOLERANCE[precision]})
    if build.ready():  # the CUDA C kernel: fp32 FMA, NCHW
        apply_precision("fp32")
        for case, unit, layer, x64, reference in layers:
            conv = RegroupedConv2d(*layer, kernel="cuda").cuda()
            error = relative_error(conv(x64.float()), reference)
            rows.append({"case": case, "unit": unit, "precision": "fp32", "kernel": "cuda", "error": error,
                         "ok": error < TOLERANCE["fp32"], "limit": TOLERANCE["fp32"]})
    rows.append(check_gradients())
    if not build.ready():
        rows.append({"kernel": "cuda", "ok": False, "error": build.error})
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise AssertionError(f"{len(bad)} of {len(rows)} checks failed: {json.dumps(bad[:5], default=str)}")
    return {"checks": len(rows), "largest_error": {p: max(r["error"] for r in rows if r.get("precision") == p)
                                                   for p in ("fp32", "tf32", "fp16", "bf16")}, "rows": rows}


def check_gradients():
    """The Triton path's input, block-weight and bias gradients against autograd through F.conv2d (fp32, TF32 off)."""
    from kernels.regrouped import RegroupedConv2d
    from bench.gpu import apply_precision, relative_error
    from bench.tickets import random_regrouped_layer
    apply_precision("fp32")
    weight, blocks, bias = random_regrouped_layer(96, 64, 3, "weight", torch.Generator().manual_seed(1))
    conv = RegroupedConv2d(weight, blocks, "weight", 2, 1, 1, bias, kernel="triton").cuda()
    x = torch.randn(9, 64, 17, 17, device="cuda", requires_grad=True)
    target = torch.randn(9, 96, 9, 9, device="cuda")
    (conv(x) * target).sum().backward()
    dense = conv.dense_weight().detach().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, dense, b, 2, 1) * target).sum().backward()
    inside = conv.scatter_blocks([torch.ones_like(w) for w in conv.block_weights])  # block weights only
    errors = {"input": relative_error(x.grad, x2.grad), "bias": relative_error(conv.bias.grad, b.grad),
              "weight": relative_error(conv.scatter_blocks([w.grad for w in conv.block_weights]), dense.grad * inside)}
    return {"kernel": "triton", "precision": "fp32", "case": "gradients", "error": max(errors.values()),
            "parts": errors, "ok": max(errors.values()) < 1e-5}


def make_tickets(args):
    """{sparsity: (masked model, mask, regroup function, conv input shapes at --layer_batch)}."""
    import functools
    from bench.tickets import conv_input_shapes, regroup_by_rows, resnet18_ticket
    tickets = {}
    for sparsity in args.sparsities:
        masked, mask = resnet18_ticket(sparsity)
        regroup = functools.partial(regroup_by_rows, rows_per_part=args.rows_per_part, unit=args.regroup_unit)
        tickets[sparsity] = (masked, mask, regroup, conv_input_shapes(masked, (args.layer_batch, 3, 32, 32)))
    return tickets


def layer_tables(args, tickets, build):
    """(b): per layer, per ticket, per precision."""
    from bench.tickets import compare_layer
    kernels = ("triton", "cuda") if build.ready() else ("triton",)
    out = []
    for sparsity, (masked, mask, regroup, shapes) in tickets.items():
        regrouped_mask, infos = regroup(mask)
        modules = dict(masked.named_modules())
        for precision in args.precisions:
            for name, info in infos.items():
                conv = modules[name]
                if info.kept_mask:
                    out.append({"sparsity": sparsity, "layer": name, "precision": precision, "blocks": 0})
                    continue
                weight = conv.weight_orig.detach() * regrouped_mask[name]
                row = compare_layer(weight, info.blocks, args.regroup_unit, conv.stride, conv.padding, conv.dilation,
                                    shapes[name], precision, kernels, args.repeats)
                row.update(sparsity=sparsity, layer=name, kernel_size=conv.kernel_size[0], blocks=len(info.blocks),
                           density=info.density_after, nonzeros_kept=info.nonzeros_kept)
                out.append(row)
                t = row.get("triton", {})
                print(f"  {sparsity} {precision} {name:<22} density {info.density_after:.3f} cudnn "
                      f"{row['cudnn']['ms']:.4f} ms triton {t.get('ms', float('nan')):.4f} ms "
                      f"({t.get('vs_cudnn', float('nan')):.2f}x of cuDNN, {_variant(t)}) cuda C "
                      f"{row.get('cuda', {}).get('ms', float('nan')):.4f} ms", flush=True)
    return out


def end_to_end(args, tickets):
    """(c): dense vs regrouped vs slimmed refill per ticket, batch and precision."""
    from bench.tickets import build_tickets, end_to_end_gpu
    out = []
    for sparsity, (masked, mask, regroup, _) in tickets.items():
        forms = build_tickets(masked, mask, regroup)
        for batch in args.batch_sizes:
            for precision in args.precisions:
                eager_too = batch == args.batch_sizes[0] and precision == args.precisions[-1]
                for graphs in (True, False) if eager_too else (True,):
                    row = end_to_end_gpu(forms, (batch, 3, 32, 32), precision, args.regroup_unit,
                                         repeats=args.repeats, cuda_graphs=graphs)
                    row.update(sparsity=sparsity, batch=batch, cuda_graphs=graphs,
                               regrouped_layers=sum(c == "regrouped" for c in row["choice"].values()),
                               density={"regrouped": forms["regrouped_mask"].density(),
                                        "refilled": forms["refilled_mask"].density()})
                    out.append(row)
                    v = row["variants"]
                    print(f"  {sparsity} batch {batch} {precision} graphs {graphs}: dense {v['dense']['ms']:.3f} ms, "
                          f"regrouped {v['regrouped']['ms']:.3f} ms ({v['regrouped']['speedup']:.2f}x, "
                          f"{row['regrouped_layers']} layers), slimmed {v['slimmed refill']['ms']:.3f} ms "
                          f"({v['slimmed refill']['speedup']:.2f}x)", flush=True)
    return out


def training(args):
    """(d): one epoch of main_imp.py on digits on CUDA, then under torchrun (NCCL)."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["main_imp.py", "--epochs", "1", "--pruning_times", "1", "--print_freq", "1000"]
        commands = {"cuda": [sys.executable] + common + ["--gpu", "0", "--save_dir", os.path.join(tmp, "single")],
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
    return runs


def markdown(data, args):
    """The report's tables."""
    from bench.gpu import versions_line
    lines = ["# GPU check", "", versions_line(data["versions"]), ""]
    tile = data.get("tile_variant")
    if tile:
        lines += ["Tile variant smoke check: " + ("passed" if tile["ok"] else
                  "FAILED, so this run used the gather variant only: " + tile["output"][-300:].replace("\n", " ")), ""]
    check = data.get("check", {})
    if "checks" in check:
        lines += [f"(a) {check['checks']} kernel checks passed; largest relative errors: "
                  + ", ".join(f"{p} {e:.1e}" for p, e in check["largest_error"].items()), ""]
    elif check:
        lines += [f"(a) FAILED: {check.get('error')}", ""]
    layers = data.get("layers")
    if isinstance(layers, list):
        lines += [f"(b) ResNet-18 (CIFAR) layers, batch {args.layer_batch}, unit {args.regroup_unit}, parts of "
                  f"~{args.rows_per_part} rows (cn = c_out/{args.rows_per_part}, b2 {args.rows_per_part // 2}, t1 1.5), "
                  f"CUDA-graph medians of {args.repeats} replays over rotating inputs [p10-p90]; time relative to "
                  "cuDNN in the same precision (lower is faster); CUDA C runs fp32 (no tensor cores) on NCHW copies.",
                  "Triton variant: the tuner's choice (gather or tile) and BLOCK_M/warps/stages.",
                  "", "| ticket | precision | layer | k | density | blocks | cuDNN ms | Triton ms | Triton/cuDNN | "
                  "Triton variant | CUDA C ms | CUDA C/cuDNN | choice |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in layers:
            if not r.get("blocks"):
                lines.append(f"| {r['sparsity']} | {r['precision']} | {r['layer']} | | | 0 | | | | | | | cuDNN (no block) |")
                continue
            t, c, d = r.get("triton", {}), r.get("cuda", {}), r["cudnn"]
            choice = "Triton" if t.get("vs_cudnn", 9) < 1 else "cuDNN"
            lines.append(f"| {r['sparsity']} | {r['precision']} | {r['layer']} | {r['kernel_size']} | {r['density']:.3f} "
                         f"| {r['blocks']} | {d['ms']:.4f} [{d['p10']:.4f}-{d['p90']:.4f}] | {_ms(t)} | {_ratio(t)} "
                         f"| {_variant(t)} | {_ms(c)} | {_ratio(c)} | {choice} |")
        lines.append("")
    e2e = data.get("end_to_end")
    if isinstance(e2e, list):
        lines += ["(c) ResNet-18 end to end, CIFAR input, channels-last; regrouped = per-layer choice (layers where "
                  "Triton is slower keep cuDNN); speedup over dense cuDNN in the same precision.", "",
                  "| ticket | batch | precision | graphs | dense ms | regrouped ms | speedup | layers on Triton | "
                  "slimmed refill ms | speedup | density regrouped / refilled |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e:
            v = r["variants"]
            lines.append(f"| {r['sparsity']} | {r['batch']} | {r['precision']} | {'yes' if r['cuda_graphs'] else 'no'} "
                         f"| {v['dense']['ms']:.3f} | {v['regrouped']['ms']:.3f} | {v['regrouped']['speedup']:.2f}x "
                         f"| {r['regrouped_layers']} | {v['slimmed refill']['ms']:.3f} | "
                         f"{v['slimmed refill']['speedup']:.2f}x | {r['density']['regrouped']:.3f} / "
                         f"{r['density']['refilled']:.3f} |")
        lines.append("")
    train = data.get("training")
    if isinstance(train, dict) and "error" not in train:
        lines.append("(d) " + "; ".join(f"{n}: exit {r['returncode']} in {r['seconds']} s, test accuracy "
                                        f"{r.get('test_accuracy')}" for n, r in train.items()))
    for name in ("check", "layers", "end_to_end", "training"):
        if isinstance(data.get(name), dict) and "error" in data[name]:
            lines.append(f"{name} FAILED: {data[name]['error'][:500]}")
    lines.append(f"\nseconds per section: {data.get('seconds')}")
    return "\n".join(lines) + "\n"


def _ms(t):
    return f"{t['ms']:.4f} [{t['p10']:.4f}-{t['p90']:.4f}]" if "ms" in t else ("failed" if t else "")


def _variant(t):
    c = t.get("config") or {}
    return f"{c.get('variant', 'gather')} {c['BLOCK_M']}/{c['num_warps']}/{c['num_stages']}" if "BLOCK_M" in c else ""


def _ratio(t):
    return f"{t['vs_cudnn']:.2f}" if "vs_cudnn" in t else ""


def main(args):
    if not torch.cuda.is_available():
        raise InvalidInput("profile/gpu_check.py needs a CUDA GPU, and PyTorch sees none (torch.cuda.is_available() is False)")
    if args.tile_smoke:
        return tile_smoke_child()
    from bench.gpu import versions, versions_line
    os.makedirs(args.out, exist_ok=True)
    report = Report(args.out)
    report.data["versions"] = versions()
    report.data["settings"] = vars(args)
    print(versions_line(report.data["versions"]), flush=True)
    build = CudaBuild()
    build.start()
    if {"check", "layers", "end_to_end"} - set(args.skip):  # the sections that run the Triton kernel
        report.data["tile_variant"] = tile_smoke()
    if "check" not in args.skip:
        report.run("check", check_kernels, build)
    tickets = make_tickets(args) if {"layers", "end_to_end"} - set(args.skip) else {}
    if "layers" not in args.skip:
        report.run("layers", layer_tables, args, tickets, build)
    if "end_to_end" not in args.skip:
        report.run("end_to_end", end_to_end, args, tickets)
    if "training" not in args.skip:
        report.run("training", training, args)
    from kernels.triton_conv import tuned_configs
    report.data["triton_configs"] = [[str(key), config] for key, config in tuned_configs()]
    report.data["cuda_build_error"] = build.error if not build.is_alive() else "still building"
    report.save()
    text = markdown(report.data, args)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    if report.failed:
        raise InvalidInput(f"{len(report.failed)} section(s) failed: {', '.join(report.failed)} (see {args.out}/report.json)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
