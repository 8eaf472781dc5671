"""`tensile simulate`: a seeded discrete-event simulation of one elastic job on a stack's pool under
spot traces, and the study of it over many seeds (docs/design/simulate.md).

Pure of the trainer's heavy parts: it imports the scaler's core, the config and the ledger reader,
never torch or DeepSpeed, so it runs in a fraction of a second per simulated month.
"""
