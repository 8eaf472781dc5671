"""Tensile's elastic training package: the trainer, its checkpoints and its launcher."""

__version__ = "0.1.0"
