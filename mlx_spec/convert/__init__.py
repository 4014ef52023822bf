"""Importers that turn other projects' checkpoints into mlx-lm model folders."""
from .llama2c import convert_llama2c

__all__ = ["convert_llama2c"]
