"""Performance measurement, apart from the method and the training loop (nothing there
imports this package): FLOP counting (`flops.py`), matmul timing (`matmul_timing.py`),
and the flag-free benchmark library (`benchmark.py`) that `experiments/benchmark.py`
wraps with flags and printing."""
