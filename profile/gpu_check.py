"""Everything this tool claims about GPUs, checked and timed in one command
(docs/design.md §7), in about 6 minutes by construction (deadlines and the tile
check's timeout add up to 6 minutes, start-up on top), with nothing to
download or install; rehearsed on the CPU before any device time is spent.

    python profile/gpu_check.py --rehearse --out runs/rehearsal    # the CPU: every section at tiny sizes, and the plan
    python profile/gpu_check.py --out runs/gpu_check               # a CUDA GPU
    python profile/gpu_check.py --quick --out runs/gpu_check       # one ticket, one precision, one batch size

Sections (bench/gpu_sections.py): (a) the kernels against F.conv2d, (b)
regrouped layers against cuDNN (CIFAR ResNet-18; ResNet-50's 3x3 layers at
224x224; parts of 32, 64, 128 rows), (c) every form of a ticket at 80% end
to end, checked then timed (CIFAR ResNet-18 at batch 1, 64, 256; ResNet-50
224x224 at batch 64; then torch.compile), (d) training throughput and
one-epoch smoke runs (CUDA, torchrun). Each section has a deadline
(--deadline NAME=SECONDS): a unit of work starts only if its estimate fits
what is left (estimates from the last H200 run, docs/gpu/), the others are
skipped and the report says which. First the plan is printed: sections,
shapes, models, estimated GPU seconds. Before them the Triton kernel's tile
variant runs once in a child process (a fault there cannot take the CUDA
context down); if it fails it is switched off for the run.

--rehearse runs the same code on the CPU at tiny sizes: the Triton kernel
under its interpreter, the CPU's convolution for cuDNN's, the host clock
for CUDA events and graphs, torch.compile with the eager backend (dynamo
traces; inductor does not run), the CUDA C kernel skipped; the deadlines
run on a stand-in clock that charges each unit its GPU estimate (the
deadline logic runs as on the GPU; the plan printed is the real run's).
Both write report.json and report.md under --out. Without CUDA and
without --rehearse it stops with one line.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback

if "--rehearse" in sys.argv:  # Triton decorates its own functions at import: choose its interpreter first
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.errors import InvalidInput, run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("check", "layers", "end_to_end", "training")
DEADLINES = {"check": 35.0, "layers": 80.0, "end_to_end": 138.0, "training": 82.0}  # seconds; 335 s in all
TILE_SMOKE_TIMEOUT = 25  # seconds; with the deadlines, 6 minutes


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for report.json and report.md")
    p.add_argument("--rehearse", action="store_true", help="run every section on the CPU at tiny sizes (no GPU)")
    p.add_argument("--quick", action="store_true", help="one ticket, one precision, one batch size")
    p.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "tf32", "fp16", "bf16"],
                   help="of sections (b) and (c) (default: bf16 on a GPU; fp32 in a rehearsal)")
    p.add_argument("--regroup_unit", default="channel", choices=["weight", "channel"],
                   help="channel-unit layers can run the Triton kernel's tile variant (bulk copies); "
                        "weight-unit layers run its gather variant")
    p.add_argument("--deadline", nargs="*", default=[], metavar="SECTION=SECONDS",
                   help=f"override a section's deadline ({', '.join(f'{k}={v:g}' for k, v in DEADLINES.items())})")
    p.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS))
    p.add_argument("--tile_smoke", action="store_true", help=argparse.SUPPRESS)  # the child process of tile_smoke()
    return p


def deadlines(args):
    out = dict(DEADLINES)
    for item in args.deadline:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in out or value < 0:
            raise InvalidInput(f"--deadline takes SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)} and "
                               f"SECONDS >= 0, got '{item}'")
        out[name] = value
    return out


def tile_smoke(rehearse):
    """Run the Triton kernel's tile variant once against F.conv2d: in a child
    process on a GPU (a fault there cannot take this process's CUDA context
    down with it; if it fails the variant is switched off for the run with
    STRUCTLTH_TRITON_TILE=0 and the report says so), in-process in a
    rehearsal (the interpreter, fp32 and fp16)."""
    tic = time.time()
    if rehearse:
        try:
            tile_smoke_child("cpu", ("fp32", "fp16"))
            ok, tail = True, "rehearsal: in-process, Triton's interpreter"
        except BaseException as err:  # noqa: BLE001 - reported like the child's failure
            ok, tail = False, f"{type(err).__name__}: {err}"
    else:
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--out", "unused", "--tile_smoke"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=TILE_SMOKE_TIMEOUT)
            ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {TILE_SMOKE_TIMEOUT} s"
    if not ok:
        os.environ["STRUCTLTH_TRITON_TILE"] = "0"
    print(f"tile variant smoke check: {'passed' if ok else 'FAILED, switched off for this run'} "
          f"({time.time() - tic:.0f} s){'' if ok else chr(10) + tail}", flush=True)
    return {"ok": ok, "output": tail, "seconds": round(time.time() - tic, 1)}


def tile_smoke_child(device="cuda", precisions=("fp32", "bf16")):
    """The tile variant against F.conv2d; raises SystemExit(1) on a mismatch."""
    from kernels.regrouped import RegroupedConv2d
    from kernels.triton_conv import default_config
    from bench.gpu import apply_precision
    from bench.tickets import TOLERANCE, check_layer, random_regrouped_layer
    weight, blocks, bias = random_regrouped_layer(128, 64, 3, "channel", torch.Generator().manual_seed(2), cn=4, b2=8)
    x64 = torch.randn(3 if device == "cpu" else 9, 64, 8 if device == "cpu" else 16, 8 if device == "cpu" else 16,
                      generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    reference = F.conv2d(x64, weight.double().to(device), bias.double().to(device), 1, 1)
    for precision in precisions:
        dtype = apply_precision(precision)
        conv = RegroupedConv2d(weight, blocks, "channel", 1, 1, 1, bias, kernel="triton").to(device)
        conv.triton_config = default_config("tile")
        error, ok = check_layer(conv, x64.to(dtype).contiguous(memory_format=torch.channels_last), reference,
                                precision, "triton")
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"tile variant, {precision}: relative error {error:.2e} (limit {TOLERANCE[precision]})", flush=True)
        if not ok:
            raise SystemExit(1)


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


class Report:
    """Sections with their rows, errors and budgets, written after each unit."""

    def __init__(self, out):
        self.out, self.data, self.failed = out, {}, []

    def run_section(self, name, section, work, rehearse):
        from bench.budget import Budget
        budget = Budget(section, rehearsal=rehearse)
        result = self.data[name] = {"rows": [], "errors": []}
        print(f"({section.name}) {section.title}: deadline {section.deadline:.0f} s", flush=True)
        for unit, fn in work:
            if not budget.admit(unit):
                print(f"  skipped (deadline): {unit.what}", flush=True)
                continue
            try:
                result["rows"] += fn()
            except Exception as err:  # noqa: BLE001 - a failed unit is reported, the others still run
                result["errors"].append({"unit": unit.what, "error": f"{type(err).__name__}: {err}",
                                         "traceback": traceback.format_exc()})
                print(f"  FAILED {unit.what}: {type(err).__name__}: {err}", flush=True)
            budget.done(unit)
            result["budget"] = budget.summary()
            self.save()
        result["budget"] = budget.summary()
        bad = [r for r in result["rows"] if r.get("ok") is False]
        if bad:
            result["errors"].append({"unit": "checks", "error": f"{len(bad)} of {len(result['rows'])} checks failed: "
                                                                f"{json.dumps(bad[:5], default=str)}"})
        if result["errors"]:
            self.failed.append(name)
        if budget.skipped:
            print(f"  ({section.name}) {result['budget']['note']}", flush=True)
        self.save()

    def save(self):
        with open(os.path.join(self.out, "report.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)


def build_sections(args, rehearse):
    """[(name, Section, work)] of this run."""
    from bench import gpu_sections as g
    sizes = g.REHEARSAL if rehearse else g.REAL
    if args.quick:
        sizes = g.quick(sizes)
    precisions = args.precisions or (["fp32"] if rehearse else ["bf16"])
    if args.quick:
        precisions = precisions[-1:]
    limits = deadlines(args)
    build = None if rehearse else CudaBuild()
    makers = {"check": lambda: g.check_section(sizes, limits["check"], build),
              "layers": lambda: g.layers_section(sizes, limits["layers"], precisions, args.regroup_unit),
              "end_to_end": lambda: g.e2e_section(sizes, limits["end_to_end"], precisions, args.regroup_unit),
              "training": lambda: g.training_section(sizes, limits["training"])}
    return [(name, *makers[name]()) for name in SECTIONS if name not in args.skip], sizes, build


def markdown(data, args):
    """The report's tables."""
    from bench.gpu import versions_line
    from bench.gpu_sections import variant_text
    lines = ["# GPU check" + (" (CPU rehearsal: tiny sizes, stand-in clock)" if data.get("rehearsal") else ""), "",
             versions_line(data["versions"]) if "gpu" in data.get("versions", {}) else str(data.get("versions")), ""]
    for what, why in data.get("not_rehearsed", {}).items():
        lines.append(f"- not in the rehearsal: {what}: {why}")
    tile = data.get("tile_variant")
    if tile:
        lines += ["", "Tile variant smoke check: " + ("passed" if tile["ok"] else
                  "FAILED, so this run used the gather variant only: " + tile["output"][-300:].replace("\n", " ")), ""]
    check = data.get("check", {})
    if check.get("rows"):
        errors = {}
        for r in check["rows"]:
            errors[r["precision"]] = max(errors.get(r["precision"], 0.0), r["error"])
        passed = sum(bool(r.get("ok")) for r in check["rows"])
        lines += [f"(a) {passed} of {len(check['rows'])} kernel checks passed; largest relative errors: "
                  + ", ".join(f"{p} {e:.1e}" for p, e in errors.items()), ""]
    layers = data.get("layers", {}).get("rows")
    if layers:
        lines += ["(b) Regrouped layers, unit " + args.regroup_unit + "; parts of the given rows (cn = c_out/rows, "
                  "b2 rows/2, t1 1.5); CUDA-graph medians over rotating inputs [p10-p90]; Triton's time relative to "
                  "cuDNN's in the same precision (lower is faster); the variant is the tuner's choice.", "",
                  "| ticket | precision | layer | k | parts (rows) | density | blocks | cuDNN ms | Triton ms | "
                  "Triton/cuDNN | Triton variant | choice |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in layers:
            if not r.get("blocks"):
                lines.append(f"| {r['ticket']} | {r['precision']} | {r['layer']} | | {r['parts_rows']} | | 0 | | | | | "
                             "cuDNN (no block) |")
                continue
            t, d = r.get("triton", {}), r["cudnn"]
            choice = "Triton" if t.get("vs_cudnn", 9) < 1 else "cuDNN"
            lines.append(f"| {r['ticket']} | {r['precision']} | {r['layer']} | {r['kernel_size']} | {r['parts_rows']} "
                         f"| {r['density']:.3f} | {r['blocks']} | {d['ms']:.4f} [{d['p10']:.4f}-{d['p90']:.4f}] | "
                         f"{_ms(t)} | {_ratio(t)} | {variant_text(t)} | {choice} |")
        lines.append("")
    e2e = data.get("end_to_end", {}).get("rows")
    if e2e:
        lines += ["(c) Whole networks, channels-last, every form checked against the model it implements first; "
                  "speedup over the dense model in the same BatchNorm form, runtime and precision; FLOPs ratio: "
                  "dense FLOPs over those the form executes.", "",
                  "| ticket | batch | precision | runtime | form | ms | speedup [p10-p90] | FLOPs ratio | of FLOPs | "
                  "compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e:
            speed = "ref" if r.get("speedup") is None else \
                f"{r['speedup']:.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}]"
            share = "" if r.get("speedup") is None else f"{r['speedup'] / r['flops_ratio']:.2f}"
            compiled = f"{r['compile_s']:.1f}" if r.get("compile_s") else ""
            lines.append(f"| {r['ticket']} | {r['batch']} | {r['dtype']} | {r['runtime']} | {r['form']} | "
                         f"{r.get('ms', float('nan')):.3f} | {speed} | {r['flops_ratio']:.2f}x | {share} | {compiled} |")
        lines.append("")
    train = data.get("training", {}).get("rows")
    if train:
        epochs = [r for r in train if r.get("epoch")]
        if epochs:
            lines += ["(d) Whole training epochs against the step alone on data already on the device (the ceiling), "
                      "dense and masked (80%), AMP (bf16 where the GPU has it), channels-last; images/s, median "
                      "[p10-p90] of the timed epochs, alternating models and paths.", "",
                      "| ticket | data | model | path | images/s [p10-p90] | of ceiling |", "|---|---|---|---|---|---|"]
            for r in epochs:
                lines.append(f"| {r['ticket']} | {r['dataset']} | {r['variant']} | {r['path']} | "
                             f"{r['images_per_s']:.0f} [{r['images_per_s_p10']:.0f}-{r['images_per_s_p90']:.0f}] | "
                             f"{r['of_ceiling']:.2f} |")
            lines.append("")
        steps = [r for r in train if "smoke" not in r and not r.get("epoch")]
        if steps:
            lines += ["Training steps (forward, loss, backward, SGD), random data, AMP on CUDA, channels-last.", "",
                      "| model | runtime | batch | images/s | step ms [p10-p90] | compile s |", "|---|---|---|---|---|---|"]
        for r in steps:
            compiled = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
            lines.append(f"| {r['model']} | {'compiled' if r['compiled'] else 'eager'} | {r['batch']} | "
                         f"{r['images_per_s']:.0f} | {r['step_ms']:.2f} [{r['p10_ms']:.2f}-{r['p90_ms']:.2f}] | "
                         f"{compiled} |")
        for r in train:
            if "smoke" in r:
                lines.append("\nsmoke runs: " + "; ".join(f"{n}: exit {s['returncode']} in {s['seconds']} s, test "
                                                         f"accuracy {s.get('test_accuracy')}" for n, s in r["smoke"].items()))
        lines.append("")
    for name in SECTIONS:
        section = data.get(name, {})
        for error in section.get("errors", []):
            lines.append(f"{name} FAILED ({error['unit']}): {error['error'][:500]}")
        note = section.get("budget", {}).get("note")
        if note:
            lines.append(f"{name}: {note}: " + "; ".join(section["budget"]["skipped"]))
    lines.append(f"\nseconds per section: {data.get('seconds')}")
    return "\n".join(lines) + "\n"


def _ms(t):
    return f"{t['ms']:.4f} [{t['p10']:.4f}-{t['p90']:.4f}]" if "ms" in t else ("failed" if t else "")


def _ratio(t):
    return f"{t['vs_cudnn']:.2f}" if "vs_cudnn" in t else ""


def main(args):
    rehearse = args.rehearse
    if not rehearse and not torch.cuda.is_available():
        raise InvalidInput("profile/gpu_check.py needs a CUDA GPU, and PyTorch sees none (torch.cuda.is_available() is "
                           "False); --rehearse runs it on the CPU")
    if args.tile_smoke:
        return tile_smoke_child()
    from bench.budget import plan_text
    from bench.gpu import versions, versions_line
    sections, sizes, build = build_sections(args, rehearse)
    real_plan = build_sections(args, False)[0] if rehearse else sections
    plan = plan_text([section for _, section, _ in real_plan])
    print("\n".join(plan), flush=True)
    os.makedirs(args.out, exist_ok=True)
    report = Report(args.out)
    report.data.update(rehearsal=rehearse, plan=plan, settings=vars(args), not_rehearsed=sizes.skipped)
    report.data["versions"] = versions() if not rehearse else {
        "torch": torch.__version__, "device": "CPU (rehearsal)", "triton_interpreter": os.environ.get("TRITON_INTERPRET")}
    print(versions_line(report.data["versions"]) if not rehearse else f"rehearsal on the CPU: {report.data['versions']}",
          flush=True)
    if build is not None:
        build.start()
    names = [name for name, _, _ in sections]
    if {"check", "layers", "end_to_end"} & set(names):  # the sections that run the Triton kernel
        report.data["tile_variant"] = tile_smoke(rehearse)
    for name, section, work in sections:
        tic = time.time()
        report.run_section(name, section, work, rehearse)
        report.data.setdefault("seconds", {})[name] = round(time.time() - tic, 1)
    from kernels.triton_conv import tuned_configs
    report.data["triton_configs"] = [[str(key), config] for key, config in tuned_configs()]
    if build is not None:
        report.data["cuda_build_error"] = build.error if not build.is_alive() else "still building"
    report.save()
    text = markdown(report.data, args)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    if report.failed:
        raise InvalidInput(f"{len(report.failed)} section(s) failed: {', '.join(report.failed)} (see {args.out}/report.json)")
    return report.data


if __name__ == "__main__":
    run_cli(main, get_args_parser())
