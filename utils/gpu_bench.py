"""Fair GPU timing for the profiling scripts (DESIGN.md §7): one precision
applied to both sides, rotating input buffers larger than the L2 cache, and
CUDA-graph replays timed with CUDA events, taken in turn, reported as the
median with its spread.

A graph holds one call per input buffer, so a replay measures the kernels
back to back without Python's launch overhead; the per-call time is the
replay time over the number of buffers.
"""
import functools
import math
import statistics

import torch

from utils.errors import UserError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def apply_precision(name):
    """Set cuDNN's and cuBLAS's TF32 switches for `name` (on only for tf32)
    and return the tensor dtype both sides compute in."""
    if name not in PRECISIONS:
        raise UserError(f"unknown --dtype '{name}'; valid: {', '.join(PRECISIONS)}")
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
    three times the L2 cache (at least 2, at most `most`)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    count = max(2, min(most, math.ceil(3 * l2_bytes(device) / max(nbytes, 1))))
    return [torch.randn(shape, device=device, generator=generator).to(dtype).contiguous(memory_format=memory_format)
            for _ in range(count)]


def capture(fn, inputs):
    """A CUDA graph of fn(x) for every x in `inputs` (warmed up first on a
    side stream, as capture requires: cuDNN's benchmark search and Triton's
    tuning happen there, not in the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x in inputs[:2]:
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    return graph


def graph_timings(calls, repeats=50, warmup=3):
    """{name: stats} for calls = {name: (fn, inputs)}: each captured once,
    then the graphs replayed in turn `repeats` times; stats in seconds per
    call: median, p10, p90, runs."""
    graphs = {name: (capture(fn, inputs), len(inputs)) for name, (fn, inputs) in calls.items()}
    return _event_timings({name: (graph.replay, count) for name, (graph, count) in graphs.items()}, repeats, warmup)


def eager_timings(calls, repeats=50, warmup=3):
    """As graph_timings, without graphs: each pass over the inputs between two
    CUDA events (Python's launch overhead included, as an eager user sees it)."""
    def passes(fn, inputs):
        for x in inputs:
            fn(x)
    return _event_timings({name: (functools.partial(passes, fn, inputs), len(inputs))
                           for name, (fn, inputs) in calls.items()}, repeats, warmup)


def _event_timings(runners, repeats, warmup):
    """Each runner (a callable making `count` calls) run in turn `repeats`
    times between two CUDA events; stats per call."""
    for _ in range(warmup):
        for run, _ in runners.values():
            run()
    torch.cuda.synchronize()
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run, count) in runners.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / count)
    return {name: summary(t) for name, t in samples.items()}


def summary(seconds):
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median": statistics.median(ordered), "p10": pick(0.1), "p90": pick(0.9), "runs": len(ordered)}


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
