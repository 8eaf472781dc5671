"""Tensile's sharded layout for ZeRO 1–3 state: saved once, loaded at any worker count.

layout (pure slice planning and names) → partition (the live engine's slices) → snapshot (save)
and restore (load at M workers); consolidate rebuilds whole tensors without an engine; shard_file
is the safetensors file read by byte range. docs/design/reshard.md tells the whole story.
"""
