"""Benchmark helpers shared by profile/ and experiments/: tickets built to
be timed (tickets.py), fair GPU comparisons (gpu.py), per-layer kernel files
and environment lines (layer.py). The timers themselves are utils/timing.py,
which the library's per-layer choices use too."""
