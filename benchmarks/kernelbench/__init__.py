"""The kernel benchmark behind ``benchmarks/kernels.py``: ``providers`` (inputs and the implementations compared),
``harness`` (child processes, timing, peak memory, tables and result files), and one module per mode: ``cpu``
(one fresh process per provider and measurement, interleaved rounds), ``cuda`` (CUDA events, in one process) and
``tune`` (launch-configuration sweep of the fused Triton kernel)."""
