"""The harness behind ``sparseforge bench``: every registered method on every backend, side by side."""

from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
