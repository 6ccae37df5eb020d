"""Masks and the ways to make them: global magnitude pruning (IMP), refill,
regroup, slimming."""
