"""Packaged example configs."""
