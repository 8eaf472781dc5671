"""Tensile's ratio benchmarks (`make bench`): each figure against a baseline measured in the same run."""
