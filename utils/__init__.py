"""Foundation: errors, run file names, atomic writes and the checkpoint
format (checkpoint.py), memory-layout helpers, FLOP counting, seeding and
device selection, timers. Imports nothing else of ours."""
