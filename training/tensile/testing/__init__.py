"""Test support that must run inside real Tensile processes (the fault hooks); product code
reaches it only through tensile.fault_hooks."""
