"""Sound timing of callables on the CPU or a CUDA device: warm-up, clocks
synchronised with the device (CUDA events), calls of several candidates
taken in turn so a slow spell of a shared machine hits them alike, medians
(and p10/p90) of many runs. CUDA-graph replays time kernels back to back
without Python's launch overhead (one call per input buffer; the per-call
time is the replay time over the number of buffers).

Used by the library's per-layer choices (kernels/) and by the benchmarks
(bench/, profile/)."""
import functools
import statistics
import time

import torch


def seconds_of(fn, device):
    """Wall time of one fn() call; CUDA runs are timed with events."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def alternating_samples(fns, device, repeats, warmup=2):
    """{name: [seconds]} of the callables in `fns`, timed in turn (one call
    of each per round, `repeats` rounds after `warmup`), so that a slow
    spell of a shared machine hits all of them alike; the i-th sample of
    every name comes from the same round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds_of(fn, device))
    return times


def medians(samples):
    """{name: median seconds} of {name: [seconds]}."""
    return {name: statistics.median(t) for name, t in samples.items()}


def alternating_medians(fns, device, repeats, warmup=2):
    """{name: median seconds} of alternating_samples."""
    return medians(alternating_samples(fns, device, repeats, warmup))


def paired_speedup(samples, base, name):
    """summary() of base's time over name's, round by round, for samples
    from alternating_samples. On a shared machine whose slow spells last
    longer than a round (seconds here), both calls of a round see the same
    spell and it cancels in their ratio, where a ratio of two medians
    mixes the spells each median happened to land in."""
    return summary([b / t for b, t in zip(samples[base], samples[name])])


def median_seconds(fn, device, repeats, warmup=5):
    """Median wall time of fn() after warm-up."""
    return alternating_medians({"fn": fn}, device, repeats, warmup)["fn"]


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


def host_timings(calls, repeats=50, warmup=1):
    """As eager_timings for CPU tensors, on the host clock: the stand-in of
    CUDA events and graphs when a GPU script is rehearsed on the CPU."""
    def passes(fn, inputs):
        for x in inputs:
            fn(x)
    runners = {name: functools.partial(passes, fn, inputs) for name, (fn, inputs) in calls.items()}
    samples = alternating_samples(runners, torch.device("cpu"), repeats, warmup)
    return {name: summary([t / len(calls[name][1]) for t in samples[name]]) for name in calls}


def timings(device, cuda_graphs=True):
    """The timer of {name: (fn, inputs)} calls for `device`: CUDA-graph
    replays or CUDA events on a GPU, the host clock on the CPU."""
    if torch.device(device).type != "cuda":
        return host_timings
    return graph_timings if cuda_graphs else eager_timings


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
