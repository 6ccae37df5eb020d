"""Fair GPU comparisons for the profiling scripts (docs/design.md §7): one
precision applied to both sides, rotating input buffers larger than the L2
cache, errors relative to the reference, and the versions every table
states (the CUDA-event and CUDA-graph timers: utils/timing.py).
"""
import math

import torch

from utils.errors import InvalidInput

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def apply_precision(name):
    """Set cuDNN's and cuBLAS's TF32 switches for `name` (on only for tf32)
    and return the tensor dtype both sides compute in."""
    if name not in PRECISIONS:
        raise InvalidInput(f"unknown --dtype '{name}'; valid: {', '.join(PRECISIONS)}")
    torch.backends.cudnn.allow_tf32 = name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    torch.backends.cudnn.benchmark = True
    return DTYPES[name]


def precision_line(name):
    return (f"precision {name}: tensors {DTYPES[name]}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark={torch.backends.cudnn.benchmark}")


def l2_bytes(device):
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "L2_cache_size", 50 * 2 ** 20)


def rotating_inputs(shape, dtype, device, memory_format=torch.channels_last, generator=None, most=64):
    """Fresh random buffers (never zeros), enough that together they hold
    three times the L2 cache (at least 2, at most `most`; one on the CPU)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cuda":  # a CPU rehearsal of a GPU script: no cache to defeat, one buffer
        return [torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=memory_format)]
    count = max(2, min(most, math.ceil(3 * l2_bytes(device) / max(nbytes, 1))))
    return [torch.randn(shape, device=device, generator=generator).to(dtype).contiguous(memory_format=memory_format)
            for _ in range(count)]


def relative_error(got, reference):
    """‖got − ref‖ / ‖ref‖ in float64 (inf for NaN or an empty reference)."""
    got, reference = got.double(), reference.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    norm = reference.norm().item()
    return (got - reference).norm().item() / norm if norm > 0 else math.inf


def versions():
    """GPU, driver, CUDA, cuDNN, torch and triton versions, for every table."""
    import subprocess
    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, l2_mb=round(l2_bytes(0) / 2 ** 20, 1),
                    memory_gb=round(props.total_memory / 2 ** 30, 1), cudnn=torch.backends.cudnn.version(),
                    capability=f"{props.major}.{props.minor}")
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def versions_line(info):
    return " | ".join(f"{k} {v}" for k, v in info.items() if v is not None)
