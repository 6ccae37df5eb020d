"""Compile the Triton kernel's variants for a Hopper GPU without one, and
say what the compiler made of them: the loads (bulk tensor copies or plain
global loads), the matrix instructions (wgmma or mma.sync), registers,
spills and shared memory. What costs no device time, read before a GPU
session (docs/gpu/NOTES.md).

    python profile/regroup_conv/sm90_compile.py --dtype bf16 --out runs/sm90

Each variant is compiled for sm_<--arch> by this machine's Triton (its
bundled ptxas); --out keeps the TTGIR, PTX and, where Triton's cuobjdump
is present, the SASS. Instruction counts are static (in the code, not
executed). Layer geometry does not enter the code except through the
constants given here (tiles, box, kernel size), as in the real launches.
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from utils.errors import InvalidInput, run_cli  # noqa: E402

TRITON_TYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
PTX_PATTERNS = {  # what to count in the PTX, and what each tells
    "bulk tensor copies": r"cp\.async\.bulk\.tensor",
    "wgmma": r"wgmma\.mma_async",
    "mma.sync": r"\bmma\.sync",
    "cp.async (16 B)": r"cp\.async\.cg",
    "global loads": r"\bld\.global",
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bf16", choices=sorted(TRITON_TYPES))
    p.add_argument("--variant", default="both", choices=["gather", "tile", "both"])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    p.add_argument("--block_n", type=int, default=32, help="rows of a block per program (16, 32, 64 or 128)")
    p.add_argument("--block_m", type=int, default=128, help="output pixels per program")
    p.add_argument("--width", type=int, default=32, help="output map width (sets the tile variant's box)")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--kernel_size", type=int, default=3)
    p.add_argument("--stride", type=int, default=1, help="the tile variant's stride (a compile-time constant)")
    p.add_argument("--out", default=None, help="folder for the TTGIR, PTX and SASS of each variant")
    return p


def signature(kernel, types, constants):
    """Triton's signature strings for the kernel's arguments: pointers,
    tensor descriptors (given in `types`), 32-bit integers, constants."""
    sig = {}
    for name in kernel.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        else:
            sig[name] = "i32"
    return sig


def variant_sources(args):
    """{variant: (jitted kernel, signature, constants)} at the given tiles."""
    from kernels import triton_conv
    dtype = TRITON_TYPES[args.dtype]
    block_k = 16 if args.dtype == "fp32" else 32  # triton_conv.chunk_size's 64 bytes
    common = {"KH": args.kernel_size, "KW": args.kernel_size, "PRECISION": "tf32", "BLOCK_N": args.block_n,
              "BLOCK_K": block_k}
    sources = {}
    if args.variant in ("gather", "both"):
        kernel = triton_conv._kernel(False)
        constants = dict(common, CONTIGUOUS=False, BLOCK_M=args.block_m)
        pointers = {name: f"*{dtype}" for name in ("x_ptr", "w_ptr", "y_ptr")}
        pointers.update({name: "*i32" for name in ("tasks_ptr", "rows_ptr", "chunk_tap_ptr", "chunk_c_ptr")},
                        bias_ptr="*fp32")
        sources["gather"] = (kernel, signature(kernel, pointers, constants), constants)
    if args.variant in ("tile", "both"):
        kernel = triton_conv._tile_kernel(False)
        images, rows, cols = triton_conv.pixel_box(args.width, args.width, args.block_m)
        constants = dict(common, SH=args.stride, SW=args.stride, BN_IMG=images, BH=rows, BW=cols)
        types = {"x_desc": f"tensordesc<{dtype}[{images},{rows},1,{cols},{block_k}]>",
                 "w_desc": f"tensordesc<{dtype}[{block_k},{args.block_n}]>", "y_ptr": f"*{dtype}",
                 "bias_ptr": "*fp32", "tasks_ptr": "*i32", "rows_ptr": "*i32", "chunk_c_ptr": "*i32"}
        sources["tile"] = (kernel, signature(kernel, types, constants), constants)
    return sources


def compile_variant(kernel, sig, constants, args):
    """The compiled kernel's assembly: {"ttgir", "ptx", "cubin", "shared"}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", args.arch, 32),
                              options={"num_warps": args.warps, "num_stages": args.stages})
    return {"ttgir": compiled.asm["ttgir"], "ptx": compiled.asm["ptx"], "cubin": compiled.asm["cubin"],
            "shared": compiled.metadata.shared}


def sass_report(cubin, folder, name):
    """(registers, stack-frame bytes (spills), SASS instruction counts) through
    Triton's bundled cuobjdump; None where it is missing."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    path = os.path.join(folder, f"{name}.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    counts = {}
    for op in re.findall(r"\b(HGMMA\.[\w.]+|UTMALDG\.\w+|HMMA\.[\w.]+|LDGSTS\.[\w.]+|LDL|STL)\b", sass):
        counts[op] = counts.get(op, 0) + 1
    return {"registers": int(registers.group(1)) if registers else None,
            "stack_bytes": int(stack.group(1)) if stack else None, "sass": counts, "sass_text": sass}


def main(args):
    try:
        import triton
    except ImportError:
        raise InvalidInput("sm90_compile.py needs triton (pip install triton; wheels exist for Linux x86-64)") from None
    if args.block_n not in (16, 32, 64, 128):
        raise InvalidInput(f"--block_n must be 16, 32, 64 or 128 (tl.dot needs at least 16), got {args.block_n}")
    if args.block_m < 16 or args.block_m & (args.block_m - 1):
        raise InvalidInput(f"--block_m must be a power of two of at least 16, got {args.block_m}")
    import tempfile
    folder = args.out or tempfile.mkdtemp(prefix="sm90_")
    print(f"Triton {triton.__version__} ({os.path.dirname(triton.__file__)}), target sm_{args.arch}")
    os.makedirs(folder, exist_ok=True)
    results = {}
    for name, (kernel, sig, constants) in variant_sources(args).items():
        asm = compile_variant(kernel, sig, constants, args)
        counts = {label: len(re.findall(pattern, asm["ptx"])) for label, pattern in PTX_PATTERNS.items()}
        sass = sass_report(asm["cubin"], folder, name)
        for suffix in ("ttgir", "ptx"):
            with open(os.path.join(folder, f"{name}.{suffix}"), "w") as f:
                f.write(asm[suffix])
        if sass:
            with open(os.path.join(folder, f"{name}.sass"), "w") as f:
                f.write(sass.pop("sass_text"))
        results[name] = {"ptx": counts, "shared_bytes": asm["shared"], **(sass or {})}
        tiles = ", ".join(f"{k} {v}" for k, v in constants.items() if k not in ("KH", "KW", "PRECISION"))
        print(f"{name} ({args.dtype}, sm_{args.arch}, {args.warps} warps, {args.stages} stages; {tiles}):")
        print("  PTX: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
        if sass:
            print(f"  SASS: {sass['registers']} registers, {sass['stack_bytes']} bytes of stack (spills: LDL/STL), "
                  + ", ".join(f"{op} {n}" for op, n in sorted(sass["sass"].items())))
        print(f"  shared memory {asm['shared']} bytes; files in {folder}")
    return results


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compiling, not interpreting: before triton is first imported
    run_cli(main, get_args_parser())
