"""Benchmarks behind `journeys bench`: ratios to a baseline measured in the same run."""
