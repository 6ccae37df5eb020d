"""Structured modules and their kernels: RegroupedConv2d (regrouped.py) with
its Triton kernel (triton_conv.py) and CUDA C reference (regroup_conv.cu /
.cpp, built by cuda_build.py); whole models made of them: grouped.py (the
regrouped ticket as block convolutions) and permuted.py (the channel-unit
ticket with BatchNorm folded and gathers removed where the layout allows).
Imports models, pruner and utils; nothing above."""
