"""The elastic runtime: the node launcher around torchrun, the rendezvous, the run's ledger,
stop requests and spot notices. `api.py` holds its values (node outcomes, exit codes, the node
directory) and errors."""
