"""Shared library code for the entry scripts: data, training, checkpoints,
command-line groups, run summaries."""
