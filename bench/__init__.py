"""resnet-perf's benchmark harness: ``python -m bench``. Timing, parity and reporting here never
know which backend they measure; the backends are runners in ``bench.runners``."""
