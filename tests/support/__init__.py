"""What several test files share: tiny random model folders (one per mlx-lm architecture), exact
distributions and chi-square tests, fuzz and kernel cases, mlx-lm's greedy reference, the CLI
as a subprocess, fake DSI workers. Importable as `support.*` (pytest's pythonpath is tests/)."""
