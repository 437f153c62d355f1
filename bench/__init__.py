"""Benchmarks: ``python -m bench`` (the pipeline through the runtime) and
``python -m bench.transport`` (the function client's HTTP transport). See bench/README.md."""
