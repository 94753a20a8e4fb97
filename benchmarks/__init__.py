"""Throughput and model-FLOPs-utilisation benchmarks of the library's real jitted train steps."""
