"""End-to-end benchmarks: the pipeline through Dagster against a minimal baseline and dlt."""
