"""External baselines the benchmark compares with, run on the same loaded models."""
